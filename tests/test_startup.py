"""Ctrl-C while imgcate imports: held until the imports end, then acted on (imgcate.startup)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from imgcate.startup import interrupts_held, is_command


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
    assert is_command("/home/me/.venv/bin/imgcate") and is_command("-m")
    assert is_command("C:\\env\\Scripts\\imgcate.exe")
    assert not is_command("/usr/bin/pytest") and not is_command("analysis.py")
    assert not is_command("")


def test_ctrl_c_while_the_command_starts_exits_130_with_one_line(tmp_path):
    """Ctrl-C during the command's imports (JAX: seconds) used to print a traceback, or to be
    swallowed by JAX's garbage-collection callback so that the command ran to its end with
    status 0; now it stops the command before it starts: status 130, one line, no output."""
    out = tmp_path / "trial"
    args = [sys.executable, "-m", "imgcate.cli", "simulate", str(out), "--n-units", "100"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    time.sleep(0.6)  # inside the imports, which take 2-5 s (interpreter start-up: < 0.1 s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err == "imgcate: interrupted while starting; nothing was done.\n"
    assert not out.exists()


def test_a_ctrl_c_inside_a_gc_callback_is_delivered_again_after_it():
    """A KeyboardInterrupt raised inside a garbage-collection callback (JAX runs one at every
    collection) is reported as ignored by Python, and the program goes on; wrapped, the
    callback delivers it to the main thread again as it returns."""
    import gc

    from imgcate.startup import interrupts_past_gc

    fired = []

    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(True)
            raise KeyboardInterrupt

    before = list(gc.callbacks)
    gc.callbacks.append(callback)
    try:
        interrupts_past_gc()
        interrupts_past_gc()  # wrapped once only
        assert [cb.__wrapped__ for cb in gc.callbacks][-1] is callback
        assert not any(hasattr(cb.__wrapped__, "__wrapped__") for cb in gc.callbacks)
        with pytest.raises(KeyboardInterrupt):
            gc.collect()
            for _ in range(1000):  # delivered at the next check of the main thread
                time.sleep(0.001)
        assert fired == [True]
    finally:
        gc.callbacks[:] = before
