"""Ctrl-C and SIGTERM as a flag, checked at safe points, instead of an exception raised anywhere.

Python raises KeyboardInterrupt wherever the main thread happens to be when a signal arrives,
and where that is a finaliser or a weakref callback, Python prints "Exception ignored" and goes
on: a sweep then runs all its remaining jobs and exits 0. So the handler only sets a flag; the
measurement loop checks it between steps, the sweep before and after each job, and the command
line at its end. A second signal stops at once, for a step that never ends.
"""
from __future__ import annotations

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
