"""Phase-timing overhead from a `+study=overhead` sweep: paired ratios, median and spread.

    python -m bench.run +study=overhead
    python benchmarks/overhead.py results/multirun/<time>

Each repeat ran the same job with phase timing on and then off; the ratio of their median
step times is one measurement of the overhead. Reports the median ratio and its range.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.report.load import load_records


def main(sweep: Path) -> int:
    df = load_records([sweep], warn=lambda m: print(m, file=sys.stderr))
    df = df[df.status == "ok"]
    pairs = df.pivot_table(index="repeat", columns="phases", values="step_ms")
    pairs = pairs.dropna()
    if pairs.empty or set(pairs.columns) != {True, False}:
        print(f"error: {sweep} holds no complete phases on/off pairs", file=sys.stderr)
        return 2
    ratio = (pairs[True] / pairs[False]).to_numpy()
    machine = df.machine.iloc[0]
    print(f"machine: {machine}; {df.strategy.iloc[0]} on {df.model.iloc[0]}, "
          f"batch {int(df.batch_size.iloc[0])} x seq {int(df.seq_len.iloc[0])}, {df.precision.iloc[0]}")
    for rep, (on, off, r) in enumerate(zip(pairs[True], pairs[False], ratio)):
        print(f"  repeat {rep}: phases on {on:.3f} ms, off {off:.3f} ms, ratio {r:.4f}")
    print(f"phase timing overhead: {100 * (np.median(ratio) - 1):+.2f}% (median of {len(ratio)} paired ratios; "
          f"range {100 * (ratio.min() - 1):+.2f}% to {100 * (ratio.max() - 1):+.2f}%)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
