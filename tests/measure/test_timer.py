import time
from types import SimpleNamespace

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


_CLOCK = [0.0]  # a GPU's clock, in seconds, that only advance() moves: no test here depends on the host's speed


def advance(seconds: float) -> None:
    _CLOCK[0] += seconds


class FakeEvent:
    """Stands in for torch.cuda.Event: records the fake clock's reading instead of a GPU timestamp."""

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = _CLOCK[0]

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def test_cuda_path_uses_events_and_reuses_them(monkeypatch):
    syncs = []
    monkeypatch.setattr(timer_mod.torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(timer_mod, "time", SimpleNamespace(perf_counter=lambda: _CLOCK[0]))
    monkeypatch.setattr(timer_mod.torch.cuda, "synchronize", lambda *a: syncs.append(1))
    t = StepTimer(torch.device("cuda"))
    for _ in range(2):
        t.start()
        advance(0.002)
        t.mark("forward")
        t.mark("backward")
        t.mark("optimizer")
        out = t.stop()
        assert out["forward_ms"] >= 2 and out["forward_ms"] <= out["step_ms"]
    assert len(t._events) == 4  # one event per border, created once and reused
    assert len(syncs) == 4      # a sync at each step's start and end, none inside the step


def test_window_timer_syncs_once_per_window_and_keeps_the_order(monkeypatch):
    from bench.measure.timer import WindowTimer

    syncs = []
    monkeypatch.setattr(timer_mod.torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(timer_mod, "time", SimpleNamespace(perf_counter=lambda: _CLOCK[0]))
    monkeypatch.setattr(timer_mod.torch.cuda, "synchronize", lambda *a: syncs.append(1))
    t = WindowTimer(torch.device("cuda"), phases=True, window=2)
    drained = []
    for ms in (2, 4, 6):
        t.start()
        advance(ms / 1e3)
        t.mark("forward")
        t.mark("optimizer")
        assert t.stop() == {}  # nothing read yet: no sync inside or after the step
        drained.append(t.drain())
    assert [len(d) for d in drained] == [0, 2, 0] and len(syncs) == 1
    rest = t.drain(force=True)
    assert len(rest) == 1 and len(syncs) == 2
    times = [r["step_ms"] for r in drained[1] + rest]
    assert times[0] < times[1] < times[2] and all(r["forward_ms"] <= r["step_ms"] for r in drained[1] + rest)


def test_the_protocol_reads_a_window_of_steps_in_order(monkeypatch):
    from types import SimpleNamespace

    from bench.measure import protocol

    monkeypatch.setattr(timer_mod.torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(timer_mod, "time", SimpleNamespace(perf_counter=lambda: _CLOCK[0]))
    monkeypatch.setattr(timer_mod.torch.cuda, "synchronize", lambda *a: None)

    class FakeTrainer:  # what _OnClock asks of the stepper: a step that defers its loss
        def step(self, micro, timer, defer_loss=False):
            assert defer_loss
            timer.start()
            timer.stop()
            return torch.tensor(float(micro)), {}

    clock = protocol._OnClock(torch.device("cuda"), SimpleNamespace(sync_every=3, phases=False))
    assert clock.sync == "window:3"
    rows = [row for i in range(4) for row in clock.step(FakeTrainer().step, i, "timed", i)]
    rows += clock.drain(force=True)
    assert [(r[0], r[2]) for r in rows] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]
    assert all(isinstance(r[2], float) and "step_ms" in r[3] for r in rows)
    cpu = protocol._OnClock(torch.device("cpu"), SimpleNamespace(sync_every=3, phases=False))
    assert cpu.sync == "step" and not cpu.windowed  # CPU operations are synchronous: no window
