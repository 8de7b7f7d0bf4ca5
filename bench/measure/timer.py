"""Step timer: whole-step wall time plus, optionally, forward / backward / optimizer phases.

Whole step: perf_counter around the step, with the device synchronized at the end, so
queued GPU work is inside the step it belongs to. Phases: on CUDA, events recorded on the
stream at each border (no host sync inside the step, so timing does not stall the pipeline);
on CPU, perf_counter at each border (CPU ops finish before the call returns).
A phase that occurs several times in a step (gradient accumulation) is summed.
With train.sync_every > 1 on CUDA, WindowTimer (below) times steps without a sync per step.
"""
from __future__ import annotations

import time

import torch


class StepTimer:
    def __init__(self, device: torch.device, phases: bool = True):
        self.cuda = device.type == "cuda"
        self.phases = phases
        self._marks: list[str] = []
        self._events: list = []
        self._times: list[float] = []

    def start(self) -> None:
        self._marks.clear()
        self._times.clear()
        if self.cuda:
            torch.cuda.synchronize()  # nothing from before the step may leak into it
        self._t0 = time.perf_counter()
        if self.phases:
            self._record()

    def mark(self, phase: str) -> None:
        """The phase named `phase` ends here (and the next one begins)."""
        if self.phases:
            self._marks.append(phase)
            self._record()

    def stop(self) -> dict[str, float]:
        """Ends the step; returns {'step_ms': ..., '<phase>_ms': ...}."""
        if self.cuda:
            torch.cuda.synchronize()
        step_ms = (time.perf_counter() - self._t0) * 1e3
        out = {"step_ms": step_ms}
        if not self.phases:
            return out
        if self.cuda:
            ev = self._events
            gaps = [ev[i].elapsed_time(ev[i + 1]) for i in range(len(self._marks))]
        else:
            t = self._times
            gaps = [(t[i + 1] - t[i]) * 1e3 for i in range(len(self._marks))]
        for phase, ms in zip(self._marks, gaps):
            key = f"{phase}_ms"
            out[key] = out.get(key, 0.0) + ms
        return out

    def _record(self) -> None:
        if self.cuda:
            i = len(self._marks)
            if i == len(self._events):
                self._events.append(torch.cuda.Event(enable_timing=True))
            self._events[i].record()
        else:
            self._times.append(time.perf_counter())


class WindowTimer:
    """CUDA steps timed as training runs: events at every step border, one host synchronisation
    per `window` steps, so the host queues step n+1 while the device finishes step n.

    A step's time is its start event to its end event on the stream: the device's time for the
    step, including any wait for kernels the host had not launched yet. `stop()` returns nothing;
    `drain()` returns the finished steps' figures, in order, once a window is full (or when forced).
    """

    def __init__(self, device: torch.device, phases: bool, window: int):
        self.phases, self.window = phases, window
        self._steps: list[tuple[list[str], list]] = []  # (phase names, events) of unread steps
        self._marks: list[str] = []
        self._events: list = []

    def _event(self):
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def start(self) -> None:
        self._marks, self._events = [], [self._event()]

    def mark(self, phase: str) -> None:
        if self.phases:
            self._marks.append(phase)
            self._events.append(self._event())

    def stop(self) -> dict[str, float]:
        if not self.phases or not self._marks:
            self._events.append(self._event())
        self._steps.append((self._marks, self._events))
        return {}

    def drain(self, force: bool = False) -> list[dict[str, float]]:
        if not self._steps or (len(self._steps) < self.window and not force):
            return []
        torch.cuda.synchronize()  # the window's one synchronisation
        out = []
        for marks, events in self._steps:
            row = {"step_ms": events[0].elapsed_time(events[-1])}
            for i, phase in enumerate(marks):
                key = f"{phase}_ms"
                row[key] = row.get(key, 0.0) + events[i].elapsed_time(events[i + 1])
            out.append(row)
        self._steps = []
        return out
