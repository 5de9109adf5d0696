"""Ctrl-C while imgcate starts: held until its imports have finished, then acted on.

Importing imgcate (JAX, NumPyro, rasterio, ...) takes a few seconds. A Ctrl-C in that time
raised ``KeyboardInterrupt`` wherever the interpreter was: inside an import (a traceback), or
inside JAX's garbage-collection callback, where Python reports the exception as ignored and
goes on, so that ``imgcate map ...`` ran to its end as if the key had never been pressed.
:func:`interrupts_held` keeps the signal until the imports it wraps have finished; then the
``imgcate`` command (or ``python -m imgcate.cli``) leaves with one line and status 130, and
any other program gets its ``KeyboardInterrupt`` there, at the end of ``import imgcate``.
Once the command runs, :func:`keep_lost_interrupts` delivers again a Ctrl-C that Python
reports as ignored (raised in a garbage-collection callback, a ``__del__`` or a weak
reference's callback).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import PureWindowsPath

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_STATUS = 128 + int(signal.SIGINT)

#: Seconds after which a Ctrl-C that Python reported as ignored is delivered again.
REDELIVERY_S = 0.02


def is_command(argv0: str, orig_argv: Sequence[str] = ()) -> bool:
    """Whether this process is the ``imgcate`` command.

    Parameters
    ----------
    argv0 : str
        ``sys.argv[0]``: the ``imgcate`` script (``/``- or ``\\``-separated), or ``"-m"``
        while ``python -m`` finds its module.
    orig_argv : sequence of str
        ``sys.orig_argv``, the interpreter's own arguments: with ``argv0 == "-m"`` the
        command only if the module is ``imgcate.cli`` (not another program that imports
        imgcate).

    Returns
    -------
    bool
    """
    if argv0 == "-m":
        args = list(orig_argv)
        return "-m" in args and args[args.index("-m") + 1 :][:1] == ["imgcate.cli"]
    return PureWindowsPath(argv0).stem == "imgcate"


@contextlib.contextmanager
def interrupts_held(argv0: str | None = None) -> Iterator[list]:
    """Hold Ctrl-C (SIGINT) while the block runs.

    Afterwards a held Ctrl-C ends the ``imgcate`` command with one line on stderr and status
    130 (nothing has been done yet: the command has not started), and raises
    ``KeyboardInterrupt`` in any other program. Outside the main thread, or where SIGINT does
    not have Python's default handler (a program that set its own), nothing is held; a
    handler set inside the block is left in place.

    Parameters
    ----------
    argv0 : str, optional
        The program's name (``sys.argv[0]``, the default), which tells the command from a
        program that imports imgcate (:func:`is_command`).

    Yields
    ------
    list
        The signals held so far.
    """
    held: list = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield held
        return

    def hold(signum, frame):
        held.append(signum)

    signal.signal(signal.SIGINT, hold)
    try:
        yield held
    finally:
        if signal.getsignal(signal.SIGINT) is hold:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if not held:
        return
    name = (sys.argv[0] if sys.argv else "") if argv0 is None else argv0
    if is_command(name, getattr(sys, "orig_argv", ())):
        sys.stdout.flush()
        sys.stderr.write("imgcate: interrupted while starting; nothing was done.\n")
        sys.stderr.flush()
        os._exit(INTERRUPTED_STATUS)  # JAX's threads are up: no interpreter shutdown in them
    raise KeyboardInterrupt


def keep_lost_interrupts() -> None:
    """Deliver again a Ctrl-C (or the ``KeyboardInterrupt`` a SIGTERM handler raises) that
    Python reported as ignored.

    An exception raised in a garbage-collection callback, a ``__del__`` or a weak reference's
    callback goes to ``sys.unraisablehook`` and the program goes on; JAX runs such a callback
    at every collection, so a Ctrl-C that arrived while it ran was lost and the command ran
    to its end. The hook installed here sends it to the main thread again
    :data:`REDELIVERY_S` later (``_thread.interrupt_main``), outside the callback, and passes
    every other report on to the hook it replaces. Installed once per process.
    """
    previous = sys.unraisablehook
    if getattr(previous, "keeps_interrupts", False):
        return

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            threading.Timer(REDELIVERY_S, _thread.interrupt_main).start()
            return
        previous(unraisable)

    hook.keeps_interrupts = True
    sys.unraisablehook = hook
