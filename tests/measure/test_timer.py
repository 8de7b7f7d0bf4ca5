import time

import torch

from bench.measure import timer as timer_mod
from bench.measure.timer import StepTimer


def test_cpu_phases_partition_the_step():
    t = StepTimer(torch.device("cpu"))
    t.start()
    for _ in range(2):  # gradient accumulation: phases repeat and are summed
        time.sleep(0.002)
        t.mark("forward")
        time.sleep(0.001)
        t.mark("backward")
    t.mark("optimizer")
    out = t.stop()
    assert set(out) == {"step_ms", "forward_ms", "backward_ms", "optimizer_ms"}
    assert out["forward_ms"] >= 4 and out["backward_ms"] >= 2
    assert sum(v for k, v in out.items() if k != "step_ms") <= out["step_ms"]


def test_phases_off_gives_whole_steps_only():
    t = StepTimer(torch.device("cpu"), phases=False)
    t.start()
    t.mark("forward")
    assert set(t.stop()) == {"step_ms"}


class FakeEvent:
    """Stands in for torch.cuda.Event: records a host clock reading instead of a GPU timestamp."""

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def test_cuda_path_uses_events_and_reuses_them(monkeypatch):
    syncs = []
    monkeypatch.setattr(timer_mod.torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(timer_mod.torch.cuda, "synchronize", lambda *a: syncs.append(1))
    t = StepTimer(torch.device("cuda"))
    for _ in range(2):
        t.start()
        time.sleep(0.002)
        t.mark("forward")
        t.mark("backward")
        t.mark("optimizer")
        out = t.stop()
        assert out["forward_ms"] >= 2 and out["forward_ms"] <= out["step_ms"]
    assert len(t._events) == 4  # one event per border, created once and reused
    assert len(syncs) == 4      # a sync at each step's start and end, none inside the step
