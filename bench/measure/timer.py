"""Step timer: whole-step wall time plus, optionally, forward / backward / optimizer phases.

Whole step: perf_counter around the step, with the device synchronized at the end, so
queued GPU work is inside the step it belongs to. Phases: on CUDA, events recorded on the
stream at each border (no host sync inside the step, so timing does not stall the pipeline);
on CPU, perf_counter at each border (CPU ops finish before the call returns).
A phase that occurs several times in a step (gradient accumulation) is summed.
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
