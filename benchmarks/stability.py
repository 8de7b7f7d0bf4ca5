"""The data behind the stability rule: the same jobs on a quiet machine and beside CPU-bound processes.

    python benchmarks/stability.py [--jobs N] [--out DIR]

Runs `tiny` jobs (full, lora_all, lora_qk, and the launch-bound cell: dim 32, 4 layers, 1 x 16
tokens) with 0, 1 and 2 competing processes that spin on the CPU, and prints, per job, what
bench/measure/stability.py measures: the run-queue wait per wall second, the CPU per wall
second, the drift and the p90/p10 spread, and the verdict of the current rule. Run it on an
otherwise quiet machine: the "quiet" rows are only quiet if nothing else runs.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.job import run_job  # noqa: E402
from bench.measure.env import describe  # noqa: E402
from tests.conftest import compose_cfg  # noqa: E402

CELLS = {"tiny full": ["strategy=full"], "tiny lora_all": ["strategy=lora_all"],
         "tiny lora_qk": ["strategy=lora_qk"],
         "launch-bound lora_all": ["strategy=lora_all", "model.dim=32", "model.n_heads=2", "model.n_kv_heads=1",
                                   "model.n_layers=4", "train.batch_size=1", "train.seq_len=16", "data=random"]}
COMMON = ["device=cpu", "train.steps=30", "train.warmup_steps=3", "train.progress=false", "train.eval_batches=2"]
SPIN = "while True: pass"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="jobs per cell and load")
    args = ap.parse_args()
    import torch

    print(f"machine: {describe(torch.device('cpu'))['machine']}; torch {torch.__version__}")
    print(f"{'load':>6} {'cell':<22} {'step ms':>8} {'wait/wall':>9} {'cpu/wall':>8} {'drift':>7} "
          f"{'p90/p10':>7}  verdict")
    with tempfile.TemporaryDirectory() as tmp:
        for hogs in (0, 1, 2):
            procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(hogs)]
            time.sleep(0.5 if hogs else 0)
            try:
                for name, overrides in CELLS.items():
                    for j in range(args.jobs):
                        rec = run_job(compose_cfg([*COMMON, *overrides]), Path(tmp) / f"{hogs}-{name}-{j}")
                        s = rec.stability
                        print(f"{hogs:>6} {name:<22} {rec.time.step_ms.median:8.2f} {s.wait_fraction:9.3f} "
                              f"{s.cpu_per_wall:8.2f} {s.drift:+7.2f} {s.spread:7.2f}  "
                              f"{'UNSTABLE: ' + s.reason if s.unstable else 'stable'}", flush=True)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
