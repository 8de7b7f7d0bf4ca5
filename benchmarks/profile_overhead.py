"""Does the profiled step change the timed steps? Paired jobs with train.profile on and off.

    python benchmarks/profile_overhead.py [--pairs N] [key=value ...]   (default: lora_all on tiny)

The profiled step runs before the clock starts and removes its hooks after, so the timed steps
should not see it. Jobs run in one process in ABBA order (on, off, off, on, ...), so drift hits
both alike; each pair gives the ratio of median timed steps, on/off. Also printed: what the
profiled step costs the job (its two profiled steps against the job's wall time).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.job import run_job  # noqa: E402
from tests.conftest import compose_cfg  # noqa: E402

BASE = ["device=cpu", "strategy=lora_all", "train.steps=40", "train.warmup_steps=3", "train.progress=false"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    on, off, cost = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2 * args.pairs):
            profile = (i % 4) in (0, 3)  # ABBA
            rec = run_job(compose_cfg([*BASE, *args.overrides, f"train.profile={str(profile).lower()}"]),
                          Path(tmp) / str(i))
            assert rec.status == "ok", rec.outcome
            (on if profile else off).append(rec.time.step_ms.median)
            if profile:
                cost.append(2 * rec.attribution.step_ms / 1e3 / rec.time.wall_s)
            machine = rec.env.machine
    ratio = np.array(on) / np.array(off)
    rng = np.random.default_rng(0)
    boot = np.median(rng.choice(ratio, size=(2000, ratio.size)), axis=1)
    print(f"machine: {machine}; {' '.join([*BASE, *args.overrides])}; {args.pairs} pairs")
    print(f"median timed step: profile on {np.median(on):.3f} ms, off {np.median(off):.3f} ms")
    print(f"on/off: median {np.median(ratio):.3f} (range {ratio.min():.3f}-{ratio.max():.3f}; bootstrap 90% "
          f"interval of the median {np.percentile(boot, 5):.3f}-{np.percentile(boot, 95):.3f})")
    print(f"the two profiled steps: {100 * np.median(cost):.1f}% of a job's wall time (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
