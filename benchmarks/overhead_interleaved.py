"""Phase-timing overhead measured step by step in one process.

    python benchmarks/overhead_interleaved.py [--pairs N] [key=value ...]   (default: lora_all on tiny)

Job-level pairs (+study=overhead) carry the drift of a shared machine between jobs. Here one
model alternates phase timing on and off in an ABBA order (on,off,off,on,...), so both
conditions see the same noise; the overhead is the median of the per-pair ratios, with
the 10th-90th percentile range of those ratios and a bootstrap 90% interval of the median.
"""
from __future__ import annotations

import argparse

import numpy as np

from bench.models.setup import resolve_device, seed_everything, setup
from bench.cli import compose_config
from bench.measure.env import describe
from bench.report.stats import median_interval
from bench.measure.timer import StepTimer
from bench.measure.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = compose_config(["strategy=lora_all", *args.overrides])
    device = resolve_device(cfg)
    seed_everything(cfg.train.seed)
    s = setup(cfg, device)
    trainer = Trainer(s.model, cfg, s.adapters["B"])
    t = cfg.train
    batches = [micro for micro in s.train_batches(cfg, 16)]
    timers = {True: StepTimer(device, phases=True), False: StepTimer(device, phases=False)}
    for i in range(args.warmup):
        trainer.step(batches[i % 16], timers[False])
    on, off = [], []
    for i in range(2 * args.pairs):
        phases = (i % 4) in (0, 3)  # ABBA: on, off, off, on
        _, timings = trainer.step(batches[i % 16], timers[phases])
        (on if phases else off).append(timings["step_ms"])
    on_a, off_a = np.array(on), np.array(off)
    ratio = on_a / off_a
    lo, hi = median_interval(ratio)
    env = describe(device)
    print(f"machine: {env['machine']}; torch {env['torch']}; {cfg.strategy.name} on {cfg.model.name}, "
          f"batch {t.batch_size} x seq {t.seq_len}, {t.precision}; {args.pairs} pairs")
    print(f"median step: phases on {np.median(on_a):.3f} ms, off {np.median(off_a):.3f} ms")
    print(f"phase timing overhead: {100 * (np.median(ratio) - 1):+.2f}% (median of paired ratios; "
          f"p10-p90 {100 * (np.percentile(ratio, 10) - 1):+.1f}% to {100 * (np.percentile(ratio, 90) - 1):+.1f}%; "
          f"bootstrap 90% interval of the median {100 * (lo - 1):+.2f}% to {100 * (hi - 1):+.2f}%)")


if __name__ == "__main__":
    main()
