"""Ctrl-C and SIGTERM as a flag, checked at safe points, instead of an exception raised anywhere.

Python raises KeyboardInterrupt wherever the main thread happens to be when a signal arrives,
and where that is a finaliser or a weakref callback, Python prints "Exception ignored" and goes
on: a sweep then runs all its remaining jobs and exits 0. So the handler only sets a flag; the
measurement loop checks it between steps, the sweep before and after each job, and the command
line at its end. A second signal stops at once, for a step that never ends.
"""
from __future__ import annotations

import os
import signal
import threading

_received: list[int] = []
_previous: dict[int, object] = {}


def _handler(signum, frame) -> None:
    _received.append(signum)
    if len(_received) > 1:
        raise KeyboardInterrupt(f"signal {signum}, again")


def install() -> None:
    """Route SIGINT and SIGTERM to the flag (main thread only: Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        _previous[sig] = signal.signal(sig, _handler)


def uninstall() -> None:
    for sig, handler in _previous.items():
        signal.signal(sig, handler)
    _previous.clear()
    _received.clear()


def requested() -> bool:
    return bool(_received)


def check() -> None:
    """At a safe point: stop here if a signal came."""
    if _received:
        raise KeyboardInterrupt(f"signal {_received[0]}")


def final() -> bool:
    """The last check before the process exits: the default handlers go back first, so a signal
    from here on ends the process as a signal does (the shell sees it), and one that came before
    is in the flag. Between a last look at the flag and the interpreter's exit (finalisers, torch's
    teardown: a few hundred ms) a signal was otherwise set as a flag nobody read, and a sweep
    interrupted then exited 0."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    return bool(_received)


# Fault injection for the tests: LORA_BENCH_SIGNAL_AT=<phase> makes the process send itself SIGINT
# when it reaches that phase (tests/test_signals.py drives every phase this way, deterministically).
PHASES = ("preflight", "job_start", "timed_step", "paired_step", "job_end", "report", "exit")


def point(phase: str) -> None:
    if os.environ.get("LORA_BENCH_SIGNAL_AT") == phase:
        os.environ.pop("LORA_BENCH_SIGNAL_AT")  # once: the first time the phase is reached
        os.kill(os.getpid(), signal.SIGINT)


def stop_group(proc, signals_and_waits) -> None:
    """Stop a child started with start_new_session=True, its whole process group: each signal in
    turn, waiting its seconds for the child to exit, until it has."""
    import subprocess

    for sig, wait in signals_and_waits:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
