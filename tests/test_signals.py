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


@pytest.mark.parametrize("phase", signals.PHASES)
def test_a_sigint_in_any_phase_of_a_sweep_is_never_lost(tmp_path, phase):
    """Deterministic: the process signals itself when it reaches `phase` (bench/signals.py point())."""
    import json
    import subprocess
    import sys

    from tests.conftest import FAST, ROOT

    sweep = tmp_path / "sweep"
    res = subprocess.run([sys.executable, "-m", "bench.run", "-m", "strategy=full,lora_qk", *FAST, "train.profile=false",
                          f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "LORA_BENCH_SIGNAL_AT": phase})
    # After the last check the default handler is back: the signal ends the process as a signal.
    assert res.returncode == (-signal.SIGINT if phase == "exit" else 130), (phase, res.stderr[-1500:])
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr[-1500:]
    records = [json.loads(p.read_text()) for p in sweep.glob("[0-9]*/metrics.json")]
    assert {r["status"] for r in records} <= {"ok", "interrupted"}
    if phase == "report":  # the flag waited for the report to be whole: the console says so
        assert "interrupted while the report was written: it was finished first" in res.stderr
    if phase == "preflight":
        assert not records
    else:
        assert records and (sweep / "report" / "report.md").exists()
    if phase in ("job_start", "timed_step", "paired_step", "job_end"):
        assert "Resume it (jobs already measured are skipped): python -m bench.run" in res.stderr
        assert f"hydra.sweep.dir={sweep}" in res.stderr
