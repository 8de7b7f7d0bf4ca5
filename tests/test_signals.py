"""Signals as a flag: the first sets it, a safe point acts on it, a second stops at once."""
import os
import signal

import pytest

from bench import signals


@pytest.fixture
def installed():
    signals.install()
    yield
    signals.uninstall()


def test_a_signal_sets_the_flag_and_the_safe_point_raises(installed):
    assert not signals.requested()
    signals.check()  # nothing pending: no effect
    os.kill(os.getpid(), signal.SIGTERM)
    assert signals.requested()
    with pytest.raises(KeyboardInterrupt, match=f"signal {int(signal.SIGTERM)}"):
        signals.check()


def test_a_second_signal_stops_at_once(installed):
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="again"):
        os.kill(os.getpid(), signal.SIGINT)


def test_uninstall_restores_the_handlers():
    before = signal.getsignal(signal.SIGINT)
    signals.install()
    signals.uninstall()
    assert signal.getsignal(signal.SIGINT) is before and not signals.requested()
