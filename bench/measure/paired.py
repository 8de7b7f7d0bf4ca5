"""The paired baseline: full fine-tuning of the same setting, stepped in turn with the job's own model.

Why: on a shared host the speed moves by 10-30% from one job to the next while each job's own
steps stay tight (benchmarks/coverage.py, filed under results/reference/coverage/). A LoRA job
compared with a full fine-tuning job measured seconds earlier inherits that drift, and no
interval built from either job's steps can see it. Stepping both models in turn, in one process,
puts a full fine-tuning step next to every LoRA step: whatever slows one slows the other.

    after the job's own protocol (its memory peaks and loss already recorded):
    build full fine-tuning of the same setting (same seed, same base weights, same batches)
    baseline: 2 untimed steps (AdamW creates its state; the allocator settles)
    train.paired_steps pairs, timed as whole steps: own, base | base, own | own, base | ...

The order alternates pair by pair (ABBA), so neither side always runs on the other's warm cache.
A pair's ratio is own / base; the record keeps their median, each side's statistics, and every
pair in steps.jsonl (kind `paired`), from which the report builds its interval. The job's own
figures are untouched: the baseline exists only after they are read.
"""
from __future__ import annotations

import dataclasses
import gc

import numpy as np
import torch

from bench import signals
from bench.models.setup import Setup, seed_everything, setup
from bench.config import BenchConfig, QuantConfig, StrategyConfig
from bench.measure.figures import stats
from bench.measure.timer import StepTimer
from bench.measure.trainer import Trainer
from bench.record.schema import Paired
from bench.record.store import StepLog

BASE_WARMUP = 2  # the baseline's untimed steps; the job's own model is warm from its protocol


def baseline_config(cfg: BenchConfig) -> BenchConfig:
    """Full fine-tuning as people run it, in this job's setting: no 4-bit base, no checkpointing
    (DoRA is a LoRA key, which full fine-tuning does not read). A variant's cost is then its ratio
    to this against plain LoRA's ratio to it (bench/report/variants.py)."""
    return dataclasses.replace(cfg, strategy=StrategyConfig(name="full"),
                               quant=QuantConfig(**{**dataclasses.asdict(cfg.quant), "base": "none"}),
                               train=dataclasses.replace(cfg.train, checkpointing="none"))


def is_baseline(cfg: BenchConfig) -> bool:
    return cfg.strategy.name == "full" and cfg.train.checkpointing == "none" and cfg.quant.base == "none"


def unpaired_reason(cfg: BenchConfig) -> str | None:
    """Why this job has no paired baseline (None: it has one). Plain full fine-tuning is the
    baseline and gets no section at all."""
    t = cfg.train
    if t.paired_steps == 0:
        return "train.paired_steps=0"
    if t.compile or t.cuda_graphs:
        return "a compiled or captured step: the baseline would need its own compilation (compared by job)"
    if cfg.dist.nproc > 1:
        return "several processes: the ranks' baseline is not measured (compared by job)"
    if t.memory_budget_gb is not None:
        return "a memory budget: a second model would break it (compared by job)"
    return None


def measure_paired(cfg: BenchConfig, s: Setup, trainer: Trainer, log: StepLog) -> Paired | None:
    """The paired section of a job that has run its protocol (None for the baseline itself: plain
    full fine-tuning; full fine-tuning with checkpointing is paired with it)."""
    if is_baseline(cfg):
        return None
    reason = unpaired_reason(cfg)
    if reason is not None:
        return Paired(skipped=reason)
    t = cfg.train
    base_cfg = baseline_config(cfg)
    seed_everything(t.seed)
    try:
        b = setup(base_cfg, s.device)
        base = Trainer(b.model, base_cfg, b.adapters["B"])
        return _pairs(cfg, s, trainer, base, log)
    except torch.cuda.OutOfMemoryError as e:  # the job's own figures stand; only the pairing is lost
        return Paired(skipped=f"the full fine-tuning baseline did not fit beside the job: {str(e).splitlines()[0]}")
    finally:
        b = base = None
        gc.collect()
        if s.device.type == "cuda":
            torch.cuda.empty_cache()


def _pairs(cfg: BenchConfig, s: Setup, own: Trainer, base: Trainer, log: StepLog) -> Paired:
    t = cfg.train
    batches = list(s.train_batches(cfg, BASE_WARMUP + t.paired_steps))
    timer = StepTimer(s.device, phases=False)  # whole steps: phase borders would add syncs to both sides
    for micro in batches[:BASE_WARMUP]:
        base.step(micro, timer)
    own_ms, base_ms, loss = [], [], {}
    for k, micro in enumerate(batches[BASE_WARMUP:]):
        turns = [(own, own_ms), (base, base_ms)]
        for trainer, out in (turns if k % 2 == 0 else turns[::-1]):
            loss[id(trainer)], timings = trainer.step(micro, timer)
            out.append(timings["step_ms"])
        log.write({"step": k, "kind": "paired", "loss": loss[id(own)], "step_ms": own_ms[-1], "base_ms": base_ms[-1],
                   "first": "own" if k % 2 == 0 else "base"})
        signals.point("paired_step")
        signals.check()
    ratios = np.asarray(own_ms) / np.asarray(base_ms)
    return Paired(pairs=len(ratios), ratio=float(np.median(ratios)), own_ms=stats(own_ms), base_ms=stats(base_ms))
