"""The stability rule: a job beside a CPU-bound process is flagged, a quiet one is not."""
import subprocess
import sys
import time

import pytest

from bench.job import run_job
from bench.measure.stability import DRIFT_LIMIT, WAIT_LIMIT, ContentionProbe, judge
from tests.conftest import FAST, compose_cfg

JOB = [*FAST, "strategy=lora_qk", "train.steps=12", "train.warmup_steps=2"]


def _rows(step_ms, wait_ms=None):
    return [{"step_ms": s, "cpu_ms": s, "wait_ms": (wait_ms or [0.0] * len(step_ms))[i]} for i, s in enumerate(step_ms)]


def test_the_rule_on_known_figures():
    quiet = judge(_rows([10.0] * 9, [0.1] * 9))
    assert not quiet.unstable and quiet.reason is None and quiet.wait_fraction == pytest.approx(0.01)
    waited = judge(_rows([10.0] * 9, [2 * WAIT_LIMIT * 10] * 9))
    assert waited.unstable and "waited for a CPU" in waited.reason
    drifted = judge(_rows([10.0] * 3 + [11.0] * 3 + [10.0 * (1 + 2 * DRIFT_LIMIT)] * 3))
    assert drifted.unstable and "drifted by +50%" in drifted.reason and drifted.drift == pytest.approx(0.5)
    gpu = judge(_rows([10.0] * 9), {"gpu_other_processes": 2, "gpu_utilization": 0.9})
    assert gpu.unstable and "2 other process(es)" in gpu.reason
    assert judge([]).reason == "no timed step"


def test_the_probe_sees_this_process_run():
    probe = ContentionProbe()
    if not probe.available:
        pytest.skip("no /proc/self/task/*/schedstat on this system")
    probe.start()
    t = time.process_time()
    while time.process_time() - t < 0.05:  # 50 ms of CPU
        pass
    out = probe.stop()
    assert out["cpu_ms"] >= 40 and out["wait_ms"] >= 0


def test_a_job_beside_a_cpu_bound_process_is_unstable_and_a_quiet_one_is_not(tmp_path):
    if not ContentionProbe().available:
        pytest.skip("no /proc/self/task/*/schedstat on this system")
    quiet = run_job(compose_cfg(JOB), tmp_path / "quiet")
    # As many spinning processes as cores: whatever else runs, this job's threads must wait.
    import os

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        time.sleep(0.3)
        busy = run_job(compose_cfg(JOB), tmp_path / "busy")
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert busy.stability.unstable and "waited for a CPU" in busy.stability.reason
    assert busy.stability.wait_fraction > WAIT_LIMIT
    # The quiet job ran first, before the hogs; on a shared CI machine it may still have a neighbour.
    assert quiet.stability.wait_fraction < busy.stability.wait_fraction
    if quiet.stability.wait_fraction < WAIT_LIMIT / 2:
        assert not quiet.stability.unstable
