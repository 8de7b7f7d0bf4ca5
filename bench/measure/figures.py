"""The accumulator that turns steps and evaluations into the record's time and loss sections.

One small object owns the training clock, so `train_s`, `elapsed_s`, `to_target_s` and the
loss gain per second all count the same steps: those from `loss.eval_start` on.
"""
from __future__ import annotations

import math

import numpy as np

from bench.measure.stability import judge
from bench.record.schema import EvalPoint, Loss, Record, Stats, Time

ON_CLOCK = ("warmup", "timed")  # the step kinds the training clock counts


class Diverged(RuntimeError):
    def __init__(self, step: int, last_finite: float | None):
        self.step, self.last_finite = step, last_finite
        super().__init__(f"loss is not finite at step {step} (last finite loss: {last_finite})")


def stats(values: list[float]) -> Stats:
    if not values:
        return Stats()
    a = np.asarray(values, dtype=float)
    return Stats(median=float(np.median(a)), mean=float(a.mean()), p10=float(np.percentile(a, 10)),
                 p90=float(np.percentile(a, 90)), std=float(a.std(ddof=1)) if a.size > 1 else 0.0)


class JobFigures:
    """Fills `rec.time`, `rec.loss` and `rec.eval_curve` as the job goes."""

    def __init__(self, rec: Record, tokens_per_step: int, floor: float | None, target: float | None):
        self.rec, self.tokens_per_step, self.target = rec, tokens_per_step, target
        rec.time, rec.loss, rec.eval_curve = Time(), Loss(floor=floor), []
        self.rows: list[dict] = []
        self.elapsed = 0.0
        self.steps_done = 0
        self.step_now = 0  # the step in progress: where a failure happened
        self.extra_updates = 0  # optimizer updates beyond one per step (the profiler's, a capture's warm-up)
        self.first_step_s: float | None = None  # step 0's wall time (under train.compile: it compiles)

    def on_step(self, i: int, kind: str, loss: float, timings: dict) -> dict:
        """Step i ended with `loss`; returns its steps.jsonl row. Raises Diverged on NaN or inf."""
        row = {"step": i, "kind": kind, "loss": loss, "step_ms": None}
        if kind in ON_CLOCK:
            self.elapsed += timings["step_ms"] / 1e3
            row.update(timings, elapsed_s=self.elapsed)
        self.rows.append(row)
        self.steps_done = i + 1 + self.extra_updates
        if not math.isfinite(loss):
            raise Diverged(i, self.rec.loss.last)
        if self.rec.loss.first is None:
            self.rec.loss.first = loss
        self.rec.loss.last = loss
        return row

    def on_eval(self, eval_loss: float, final: bool = False) -> None:
        """An evaluation after `steps_done` optimizer steps, at the clock's current time."""
        if not self.rec.eval_curve:
            self.rec.loss.eval_start = eval_loss
        if final:
            self.rec.loss.eval_end = eval_loss
        self.rec.eval_curve.append(EvalPoint(step=self.steps_done, elapsed_s=self.elapsed, eval_loss=eval_loss))
        t = self.rec.time
        if self.target is not None and eval_loss <= self.target and t.to_target_s is None:
            t.to_target_s, t.steps_to_target = self.elapsed, self.steps_done

    def close(self, gpu: dict | None = None) -> None:
        """The time and stability sections from the steps so far (a failed job keeps what it measured)."""
        timed = [r for r in self.rows if r["kind"] == "timed"]
        self.rec.stability = judge(timed, gpu)
        t = self.rec.time
        step_ms = [r["step_ms"] for r in timed]
        t.train_s, t.timed_s, t.timed_steps = self.elapsed, sum(step_ms) / 1e3, len(step_ms)
        t.step_ms = stats(step_ms)
        for phase in ("forward", "backward", "optimizer"):
            setattr(t, f"{phase}_ms", stats([r[f"{phase}_ms"] for r in timed if f"{phase}_ms" in r]))
        t.tokens_per_s = self.tokens_per_step / (t.step_ms.median / 1e3) if t.step_ms.median else None
