"""Ctrl-C while imgcate starts: held until its imports have finished, then acted on.

Importing imgcate (JAX, NumPyro, rasterio, ...) takes a few seconds. A Ctrl-C in that time
raised ``KeyboardInterrupt`` wherever the interpreter was: inside an import (a traceback), or
inside JAX's garbage-collection callback, where Python reports the exception as ignored and
goes on, so that ``imgcate map ...`` ran to its end as if the key had never been pressed.
:func:`interrupts_held` keeps the signal until the imports it wraps have finished; then the
``imgcate`` command (or ``python -m imgcate...``) leaves with one line and status 130, and
any other program gets its ``KeyboardInterrupt`` there, at the end of ``import imgcate``.
Once the command runs, :func:`interrupts_past_gc` keeps a Ctrl-C that lands inside a
garbage-collection callback from being lost there.
"""

from __future__ import annotations

import _thread
import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import PureWindowsPath

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_STATUS = 128 + int(signal.SIGINT)

#: Seconds after which a Ctrl-C caught inside a garbage-collection callback is delivered again.
REDELIVERY_S = 0.02


def is_command(argv0: str) -> bool:
    """Whether this process is the ``imgcate`` command: its script, or ``python -m`` while
    the module is found (when Python sets ``sys.argv[0]`` to ``"-m"``)."""
    return argv0 == "-m" or PureWindowsPath(argv0).stem == "imgcate"  # / and \ both


@contextlib.contextmanager
def interrupts_held(argv0: str | None = None) -> Iterator[list]:
    """Hold Ctrl-C (SIGINT) while the block runs; yields the list of signals held.

    Afterwards a held Ctrl-C ends the ``imgcate`` command with one line on stderr and status
    130 (nothing has been done yet: the command has not started), and raises
    ``KeyboardInterrupt`` in any other program. Outside the main thread, or where SIGINT does
    not have Python's default handler (a program that set its own), nothing is held.

    Parameters
    ----------
    argv0 : str, optional
        The program's name (``sys.argv[0]``, the default), which tells the command from a
        program that imports imgcate (:func:`is_command`).
    """
    held: list = []
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield held
        return
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if not held:
        return
    name = (sys.argv[0] if sys.argv else "") if argv0 is None else argv0
    if is_command(name):
        sys.stdout.flush()
        sys.stderr.write("imgcate: interrupted while starting; nothing was done.\n")
        sys.stderr.flush()
        os._exit(INTERRUPTED_STATUS)  # JAX's threads are up: no interpreter shutdown in them
    raise KeyboardInterrupt


def interrupts_past_gc() -> None:
    """Make a Ctrl-C that lands inside a garbage-collection callback count.

    Python reports an exception raised in such a callback as ignored and goes on; JAX runs
    one at every collection, so a Ctrl-C that arrived while it ran was lost and the command
    ran to its end. Each callback is wrapped (once) so that the interrupt is delivered to the
    main thread again :data:`REDELIVERY_S` later (``_thread.interrupt_main``), outside the
    collector.
    """

    def guarded(callback):
        def run(phase, info):
            try:
                callback(phase, info)
            except KeyboardInterrupt:  # raised here again at once, it would be lost again
                threading.Timer(REDELIVERY_S, _thread.interrupt_main).start()

        run.__wrapped__ = callback
        return run

    gc.callbacks[:] = [
        cb if hasattr(cb, "__wrapped__") else guarded(cb) for cb in list(gc.callbacks)
    ]
