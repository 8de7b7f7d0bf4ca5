"""Was the machine quiet while this job was timed? Measured per step, judged per job.

Per step, this process's threads' CPU time and their run-queue wait: on Linux,
/proc/self/task/<tid>/schedstat holds, per thread, the nanoseconds it ran and the nanoseconds
it was runnable but waited for a CPU (the scheduler's run_delay). On a quiet machine a step
almost never waits; a step that shares the cores with another process waits for a large part
of its wall time, and its timing says more about the neighbour than about LoRA. On CUDA, NVML
adds the device's other compute processes and its utilisation.

The rule (`judge`) flags a job as unstable when, over its timed steps,
- its threads waited for a CPU more than WAIT_LIMIT of the steps' wall time, or
- the median of the last third of the steps differs from the first third's by more than DRIFT_LIMIT, or
- another process was computing on the same GPU.
The limits come from quiet runs against runs beside a CPU-bound process (README, "Stability").
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.record.schema import Stability

WAIT_LIMIT = 0.10   # run-queue wait per wall second of the timed steps
DRIFT_LIMIT = 0.25  # |median(last third) / median(first third) - 1|
_TASKS = Path("/proc/self/task")


def _sched() -> dict[int, tuple[int, int]] | None:
    """{thread id: (ns on a CPU, ns waiting for one)} of this process's threads, or None off Linux."""
    out = {}
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    for tid in tids:
        try:
            run, wait, _ = (_TASKS / tid / "schedstat").read_text().split()
        except (OSError, ValueError):  # the thread ended between listing and reading
            continue
        out[int(tid)] = (int(run), int(wait))
    return out or None


class ContentionProbe:
    """`start()` before a step, `stop()` after it: the step's CPU and run-queue wait, in ms."""

    def __init__(self):
        self.available = _sched() is not None
        self._before: dict[int, tuple[int, int]] = {}

    def start(self) -> None:
        if self.available:
            self._before = _sched() or {}

    def stop(self) -> dict[str, float]:
        if not self.available:
            return {}
        after = _sched() or {}
        run = wait = 0
        for tid, (r, w) in after.items():  # a thread that started during the step counts whole
            r0, w0 = self._before.get(tid, (0, 0))
            run, wait = run + r - r0, wait + w - w0
        return {"cpu_ms": run / 1e6, "wait_ms": wait / 1e6}


def gpu_neighbours(device) -> dict:
    """Other compute processes on the job's GPU and its utilisation (NVML); empty off CUDA."""
    if device.type != "cuda":
        return {}
    try:
        import pynvml

        from bench.measure.memory import nvml_handle

        handle = nvml_handle(device)
        others = [p for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid != os.getpid()]
        return {"gpu_other_processes": len(others),
                "gpu_utilization": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100}
    except Exception:  # no driver library, no permission, a container that hides pids
        return {}


def judge(timed_rows: list[dict], gpu: dict | None = None, paired: bool = False) -> Stability:
    """The stability section from the timed steps' rows (step_ms, and cpu_ms / wait_ms if probed).
    `paired`: the job's ratio comes from its paired baseline (bench/measure/paired.py), which a
    drifting host slows alike on both sides: drift is recorded, but does not make it unstable."""
    gpu = gpu or {}
    step = np.array([r["step_ms"] for r in timed_rows], dtype=float)
    s = Stability(unstable=False, steps=len(step), gpu_other_processes=gpu.get("gpu_other_processes"),
                  gpu_utilization=gpu.get("gpu_utilization"))
    if len(step) == 0:
        s.reason = "no timed step"
        return s
    if all("wait_ms" in r for r in timed_rows):
        s.wait_fraction = float(sum(r["wait_ms"] for r in timed_rows) / step.sum())
        s.cpu_per_wall = float(sum(r["cpu_ms"] for r in timed_rows) / step.sum())
    third = len(step) // 3
    if third >= 2:
        s.drift = float(np.median(step[-third:]) / np.median(step[:third]) - 1)
    s.spread = float(np.percentile(step, 90) / np.percentile(step, 10))
    reasons = []
    if s.wait_fraction is not None and s.wait_fraction > WAIT_LIMIT:
        reasons.append(f"its threads waited for a CPU {s.wait_fraction:.0%} of the time (limit {WAIT_LIMIT:.0%}): "
                       f"another process shared the cores")
    if s.drift is not None and abs(s.drift) > DRIFT_LIMIT and not paired:
        reasons.append(f"its steps drifted by {s.drift:+.0%} from the first third to the last "
                       f"(limit {DRIFT_LIMIT:.0%})")
    if s.gpu_other_processes:
        reasons.append(f"{s.gpu_other_processes} other process(es) computed on the same GPU")
    s.unstable, s.reason = bool(reasons), "; ".join(reasons) or None
    return s


# Other processes' CPU use above this many cores means a neighbour is still running.
NEIGHBOUR_CORES = 0.3


def others_cpu_cores(window_s: float = 0.5) -> float | None:
    """How many cores processes other than this one kept busy over the next `window_s` seconds
    (the whole machine's busy time from /proc/stat, less this process's own); None off Linux."""
    import time

    import psutil

    def sample():
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        busy = sum(int(x) for i, x in enumerate(fields[:8]) if i not in (3, 4))  # less idle and iowait
        t = psutil.Process().cpu_times()
        return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system, time.monotonic()

    a = sample()
    if a is None:
        return None
    time.sleep(window_s)
    b = sample()
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / (b[2] - a[2]))


def neighbour_still_busy() -> str | None:
    """Why measuring a disturbed job again now would be disturbed too (None: the machine is quiet
    again). Measured, not assumed: a second attempt beside a neighbour that is still computing
    costs a whole job and is flagged like the first."""
    cores = others_cpu_cores()
    if cores is None or cores < NEIGHBOUR_CORES:
        return None
    return f"other processes still keep {cores:.1f} cores busy"
