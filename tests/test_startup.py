"""Ctrl-C while imgcate imports: held until the imports end, then acted on (imgcate.startup)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from imgcate.startup import interrupts_held, is_command


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own SIGINT handler for each test, as an interactive program has it: a shell
    starts background jobs (a CI step, `make test &`) with SIGINT ignored, and Python then
    keeps it ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def sigint_as_default() -> None:
    """In a child process before it runs Python: SIGINT's default action, so that Python
    installs its handler (a child inherits an ignored SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_held_ctrl_c_is_a_keyboard_interrupt_at_the_end_of_the_block_in_a_program():
    """In a program that imports imgcate, the interrupt is neither lost nor raised inside the
    imports: it comes at the end of the block, and Python's handler is back."""
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held("analysis.py") as held:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now
            reached.append(list(held))
    assert reached == [[signal.SIGINT]]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_nothing_is_held_without_a_ctrl_c_or_where_a_program_has_its_own_handler():
    with interrupts_held("analysis.py") as held:
        pass
    assert held == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with interrupts_held("analysis.py") as held:
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert seen == [signal.SIGINT] and held == []  # the program's own handler had it
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_command_is_told_from_programs_by_its_name():
    assert is_command("/home/me/.venv/bin/imgcate") and is_command("C:\\env\\Scripts\\imgcate.exe")
    assert is_command("-m", ["python", "-X", "importtime", "-m", "imgcate.cli", "map"])
    assert not is_command("-m", ["python", "-m", "mytool"])  # a program that imports imgcate
    assert not is_command("/usr/bin/pytest") and not is_command("analysis.py")
    assert not is_command("")


def test_a_handler_set_while_interrupts_are_held_is_left_in_place():
    def own(signum, frame):
        pass

    try:
        with interrupts_held("analysis.py"):
            signal.signal(signal.SIGINT, own)  # e.g. a module imported in the block
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_ctrl_c_while_the_command_starts_exits_130_with_one_line(tmp_path):
    """Ctrl-C during the command's imports (JAX: seconds) used to print a traceback, or to be
    swallowed by JAX's garbage-collection callback so that the command ran to its end with
    status 0; now it stops the command before it starts: status 130, one line, no output."""
    out = tmp_path / "trial"
    args = [sys.executable, "-m", "imgcate.cli", "simulate", str(out), "--n-units", "100"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env}
    proc = subprocess.Popen(args, **pipes, preexec_fn=sigint_as_default)
    time.sleep(1.0)  # inside the imports, which take 2-5 s (interpreter start-up: < 0.2 s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == "imgcate: interrupted while starting; nothing was done.\n"
    assert not out.exists()


def test_a_ctrl_c_that_python_reports_as_ignored_is_delivered_again(monkeypatch):
    """A KeyboardInterrupt raised in a garbage-collection callback (JAX runs one at every
    collection) goes to sys.unraisablehook and the program goes on; with the hook in place it
    is sent to the main thread again just after (recorded here instead), and any other report
    goes on to the previous hook."""
    import _thread
    import gc
    import threading

    from imgcate.startup import keep_lost_interrupts

    sent, reported = threading.Event(), []
    monkeypatch.setattr(_thread, "interrupt_main", sent.set)
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_type))
    keep_lost_interrupts()
    keep_lost_interrupts()  # once only
    assert sys.unraisablehook.keeps_interrupts

    def callback(phase, info):
        if phase == "start":
            raise KeyboardInterrupt if not reported else RuntimeError("another failure")

    gc.callbacks.append(callback)
    try:
        gc.collect()
        assert sent.wait(5) and reported == []
        reported.append("first")
        gc.collect()
        assert reported == ["first", RuntimeError]
    finally:
        gc.callbacks.remove(callback)
