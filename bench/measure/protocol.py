"""The measurement protocol: which steps run, in what order, and what each contributes to the record.

    step 0        first   untimed; AdamW creates its state lazily here, the allocator warms up
    step 1        count   untimed; FLOPs, operations, saved activations, gradient and optimizer-
                          state bytes, counted in steady state
    step 2        profile untimed, with train.profile, on a configuration's first repeat (profiled()):
                          the step under torch.profiler, twice (the first pays the profiler's
                          start-up), split into categories (attribution); peak counters reset after it
                  eval    loss.eval_start: the training clock starts at 0
    warmup_steps  warmup  on the clock, not in the step statistics
    steps         timed   on the clock and in the statistics (time.step_ms, phases)
                  eval    loss.eval_end; then the cost model's calibration, outside every clock

Counting on step 0 would include AdamW's one-off state creation: on `tiny` (batch 8 x 64, this
project's CPU) `full` dispatches 794 operations on step 0 and 734 in steady state, `lora_all`
1151 and 1067, so step 0 overstated LoRA's extra operations (357 against 333) by 7%.
Every figure is written into the record as soon as it is known, so a job that fails halfway
keeps what it measured.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench import signals
from bench.models.setup import Setup
from bench.config import BenchConfig
from bench.measure import counters, memory
from bench.measure.attribution import profile_step
from bench.measure.calibrate import calibrate
from bench.measure.compiled import CompileWatch, judge_clock
from bench.measure.figures import ON_CLOCK, Diverged, JobFigures
from bench.measure.graphs import GraphedStep
from bench.measure.paired import measure_paired
from bench.measure.stability import ContentionProbe, gpu_neighbours, judge
from bench.measure.timer import StepTimer, WindowTimer
from bench.measure.trainer import Trainer
from bench.record.schema import Attribution, Calibration, Compile, Memory, Params, Record, Work
from bench.record.store import STEPS, StepLog

__all__ = ["Diverged", "OutOfMemory", "measure", "step_kind"]


class OutOfMemory(RuntimeError):
    """The device allocator or the host memory cap refused step `step`."""

    def __init__(self, step: int, where: str, detail: str):
        self.step, self.where = step, where
        super().__init__(f"out of {where} memory at step {step}: {detail}")


def profiled(cfg: BenchConfig) -> bool:
    """The attribution explains a configuration; it is not a statistic, so its first repeat carries
    it (a third of the README sweep's time otherwise). Compiled jobs profile every repeat: their
    operation count comes from the profile."""
    return cfg.train.profile and (cfg.repeat == 0 or cfg.train.compile)


def untimed(profile: bool) -> tuple[str, ...]:
    return ("first", "count", "profile") if profile else ("first", "count")


def step_kind(i: int, warmup_steps: int, profile: bool = False) -> str:
    head = untimed(profile)
    return head[i] if i < len(head) else ("warmup" if i < len(head) + warmup_steps else "timed")


def _count_step(trainer: Trainer, micro: list[torch.Tensor], rec: Record, i: int, compiled: bool) -> float:
    """Step i under the counters: the work section and the memory split. Under torch.compile it
    runs eager (counters cannot see into a compiled graph; FLOPs and bytes are the same math), and
    the operation count comes from the profiled step instead (Work.ops_kind)."""
    with counters.StepCounts(trainer.model) as probe:
        loss, _ = trainer.step(micro, StepTimer(micro[0].device, phases=False), probe, eager=compiled)
    rec.work.flops_per_step, rec.work.counted_step = probe.flops, i
    rec.work.ops_per_step = None if compiled else probe.ops
    m = rec.memory
    m.weights_bytes, m.grads_bytes = counters.weights_bytes(trainer.model), probe.grads_bytes
    m.optimizer_state_bytes = counters.optimizer_state_bytes(trainer.optimizer)
    m.activations_bytes = probe.saved.bytes
    return loss


def _profile_step(trainer: Trainer, micro: list[torch.Tensor], rec: Record, compiled: bool) -> float:
    """The attribution section: where one step's time goes, by category. Under torch.compile no
    module ranges are opened (a hook added after compiling would recompile the model)."""
    losses = []
    untimed_timer = StepTimer(micro[0].device, phases=False)
    a = profile_step(lambda: losses.append(trainer.step(micro, untimed_timer)[0]), trainer.model, micro[0].device,
                     ranges=not compiled)
    rec.attribution = Attribution(step_ms=a["step_ms"], categories=a["categories"], ops=a["ops"],
                                  kernels=a.get("kernels"), rest_ops=a.get("rest_ops", {}))
    if compiled:
        rec.work.ops_per_step, rec.work.ops_kind = sum(a["ops"].values()), "profiled"
    return losses[-1]


def _host_cap(cfg: BenchConfig, device: torch.device) -> int | None:
    """The RSS cap: train.max_host_memory_gb, and on CPU the memory budget too (the lower wins)."""
    t = cfg.train
    caps = [gb for gb in (t.max_host_memory_gb, t.memory_budget_gb if device.type == "cpu" else None) if gb]
    return int(min(caps) * 2**30) if caps else None


class _OnClock:
    """The on-clock steps' timing: each step's figures at once (a host sync at every border), or,
    with train.sync_every > 1 on CUDA, a window's figures at a time (bench/measure/timer.py)."""

    def __init__(self, device: torch.device, t):
        self.windowed = device.type == "cuda" and t.sync_every > 1
        self.timer = WindowTimer(device, t.phases, t.sync_every) if self.windowed else StepTimer(device, t.phases)
        self.sync = f"window:{t.sync_every}" if self.windowed else "step"
        self.probe, self.pending = ContentionProbe(), []

    def step(self, stepper, i: int, kind: str, micro: list[torch.Tensor]) -> list[tuple]:
        """`stepper`: Trainer.step, or GraphedStep.step under train.cuda_graphs."""
        self.probe.start()  # outside the timer's borders: reading /proc costs the step nothing
        loss, timings = stepper(micro, self.timer, defer_loss=self.windowed)
        contention = self.probe.stop()
        if not self.windowed:
            return [(i, kind, loss, {**timings, **contention})]
        self.pending.append((i, kind, loss, contention))
        return self.drain()

    def drain(self, force: bool = False) -> list[tuple]:
        """Finished steps as (step, kind, loss, timings), in order."""
        done = self.timer.drain(force) if self.windowed else []
        out = [(i, kind, float(loss), {**t, **c}) for (i, kind, loss, c), t in zip(self.pending, done)]
        self.pending = self.pending[len(done):]
        return out


def _first_step(trainer: Trainer, micro: list[torch.Tensor], figures: JobFigures) -> float:
    """Step 0, timed on its own: under train.compile it is the step that compiles."""
    timer = StepTimer(micro[0].device, phases=False)
    loss, timings = trainer.step(micro, timer)
    figures.first_step_s = timings["step_ms"] / 1e3
    return loss


def _before_clock(cfg: BenchConfig, trainer: Trainer, micro, figures: JobFigures, watch):
    """What steps the clock: the trainer, or under train.cuda_graphs the captured step (its
    capture time, like a compilation, goes to time.compile_s)."""
    if watch is not None:
        watch.clock_starts()
    if not cfg.train.cuda_graphs:
        return trainer
    t0 = time.perf_counter()
    graphed = GraphedStep(trainer, micro)
    figures.rec.time.compile_s = time.perf_counter() - t0
    figures.extra_updates += graphed.updates  # the capture's warm-up iterations trained too
    figures.rec.compile = Compile(mode="cuda_graphs", what="the whole step: forward, backward, clipping, AdamW",
                                  graphs=1, graph_breaks=0)
    figures.rec.work.ops_kind = "aten_captured"
    return graphed


def _train(cfg: BenchConfig, s: Setup, trainer: Trainer, figures: JobFigures, log: StepLog, host, watch,
           on_step=None) -> None:
    """Every step of the protocol, each logged; evaluations between steps, untimed."""
    t, rec, device = cfg.train, figures.rec, s.device
    profile = profiled(cfg)
    head = untimed(profile)
    n_steps = len(head) + t.warmup_steps + t.steps
    clock = _OnClock(device, t)
    rec.time.sync = clock.sync
    stepper = trainer
    bar = tqdm(total=n_steps, desc=cfg.strategy.name, unit="step", leave=False, file=sys.stderr,
               disable=None if t.progress else True)
    try:
        for i, micro in enumerate(s.train_batches(cfg, n_steps)):
            figures.step_now = i
            kind = step_kind(i, t.warmup_steps, profile)
            if kind in ON_CLOCK:
                finished = clock.step(stepper.step, i, kind, micro)
            elif kind == "count":
                finished = [(i, kind, _count_step(trainer, micro, rec, i, t.compile), {})]
            elif kind == "profile":
                finished = [(i, kind, _profile_step(trainer, micro, rec, t.compile), {})]
                figures.extra_updates += 1  # the profiler's warm-up step also updated the weights
            else:
                finished = [(i, kind, _first_step(trainer, micro, figures), {})]
            evaluate = kind == head[-1] or (kind in ON_CLOCK and t.eval_every and i + 1 < n_steps
                                            and (i + 1 - len(head)) % t.eval_every == 0)
            for row in finished + (clock.drain(force=True) if evaluate or i + 1 == n_steps else []):
                log.write(figures.on_step(*row))
            if on_step is not None:
                on_step(i, kind)
            if kind == head[-1]:
                stepper = _before_clock(cfg, trainer, micro, figures, watch)
                # The counters, the profiler and a capture held extra references: peaks start after them.
                memory.reset_peaks(device)
                host.reset()
            if evaluate:
                figures.on_eval(trainer.evaluate(s.eval_batches))
            bar.update(1)
            if kind == "timed":
                signals.point("timed_step")
            signals.check()  # Ctrl-C or SIGTERM: stop here, between steps, with the record intact
    finally:
        bar.close()


def _compile_s(figures: JobFigures) -> float | None:
    """The compiling step's wall time beyond a steady step's."""
    steady = figures.rec.time.step_ms.median
    if figures.first_step_s is None or steady is None:
        return None
    return max(0.0, figures.first_step_s - steady / 1e3)


def measure(cfg: BenchConfig, s: Setup, out_dir: Path, rec: Record, on_step=None) -> None:
    """Run the protocol on a built job, filling `rec` (its plan, params, work, memory, time,
    loss and calibration sections). Raises Diverged or OutOfMemory with the failing step.
    `on_step(i, kind)` is called after each step (a data-parallel rank counts its collectives)."""
    t = cfg.train
    rec.plan, rec.model_shape, rec.quant = s.plan, s.shape, s.quant
    rec.params = Params(**counters.param_counts(s.model))
    rec.work = Work(tokens_per_step=t.batch_size * t.seq_len * t.grad_accum)
    rec.memory = Memory()
    figures = JobFigures(rec, rec.work.tokens_per_step, s.source.floor, t.target_loss)
    trainer = Trainer(s.model, cfg, s.adapters["B"])
    host = memory.HostPeak()
    memory.reset_peaks(s.device)
    host.reset()
    guard = memory.HostMemoryGuard(_host_cap(cfg, s.device))
    watch = CompileWatch() if t.compile else None
    try:
        with StepLog(out_dir / STEPS) as log, guard:
            _train(cfg, s, trainer, figures, log, host, watch, on_step)
    except memory.HostMemoryExceeded:
        raise OutOfMemory(figures.step_now, "host", f"RSS {guard.tripped_at / 2**30:.2f} GiB passed the cap of "
                          f"{_host_cap(cfg, s.device) / 2**30:.2f} GiB (train.max_host_memory_gb, "
                          f"train.memory_budget_gb)") from None
    except torch.cuda.OutOfMemoryError as e:
        raise OutOfMemory(figures.step_now, "cuda", str(e).splitlines()[0]) from None
    finally:  # whatever happened, keep what was measured up to here
        gpu = gpu_neighbours(s.device)
        figures.close(gpu)
        if watch is not None:
            rec.compile = watch.section()
            rec.time.compile_s = _compile_s(figures)
            judge_clock(rec.stability, rec.compile)
        for k, v in memory.device_peaks(s.device).items():
            setattr(rec.memory, k, v)
        rec.memory.nvml_used_bytes = memory.nvml_used_bytes(s.device)
        rec.memory.host_peak_rss_bytes, rec.memory.host_peak_since_reset = host.peak(), host.since_reset
    losses = trainer.eval_losses(s.eval_batches)
    figures.on_eval(sum(losses) / len(losses), final=True)
    # The held-out set's own noise: a loss change smaller than this is not a finding.
    rec.loss.eval_noise = float(np.std(losses, ddof=1) / np.sqrt(len(losses))) if len(losses) > 1 else None
    # After every figure of the job's own (its memory peaks above all): the baseline is a second model.
    with StepLog(out_dir / STEPS, mode="a") as log:
        rec.paired = measure_paired(cfg, s, trainer, log)
    if rec.paired is not None and rec.paired.pairs:  # its ratio is paired: drift no longer disqualifies it
        rec.stability = judge([r for r in figures.rows if r["kind"] == "timed"], gpu, paired=True)
    # After the timed steps, so the microbenchmark cannot disturb them.
    hidden = s.shape.hidden or 4 * s.shape.dim
    rec.calibration = Calibration(**calibrate(s.device, t.precision, t.batch_size * t.seq_len, s.shape.dim, hidden))
