"""Native LoRA against PEFT from a `+study=backends` sweep: the median ratio native/peft, with its spread.

    python -m bench.run +study=backends
    python benchmarks/backends.py results/multirun/<time>

Each (repeat, strategy, rank, alpha) ran native and PEFT back to back; their ratio of median step
times is one paired measurement. Below 1.00, the native layer is faster. The scale is alpha/rank
(alpha null: scale 1, where the native layer skips its multiply).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.report.load import load_records


def main(sweep: Path) -> int:
    df = load_records([sweep])
    df = df[df.status == "ok"]
    df = df.assign(alpha=df.alpha.fillna(df["rank"]))  # alpha null means alpha = rank
    pairs = df.pivot_table(index=["strategy", "rank", "alpha", "repeat"], columns="backend", values="step_ms").dropna()
    if pairs.empty or not {"native", "peft"} <= set(pairs.columns):
        print(f"error: {sweep} holds no native/peft pairs", file=sys.stderr)
        return 2
    pairs["ratio"] = pairs["native"] / pairs["peft"]
    print(f"machine: {df.machine.iloc[0]}; model {df.model.iloc[0]}, batch {int(df.batch_size.iloc[0])} x seq "
          f"{int(df.seq_len.iloc[0])}, {df.precision.iloc[0]}")
    for (strategy, rank, alpha), g in pairs.groupby(level=["strategy", "rank", "alpha"]):
        r = g.ratio.to_numpy()
        print(f"{strategy} r={int(rank)} scale {alpha / rank:g}: native/peft median {np.median(r):.3f} (range {r.min():.3f}-{r.max():.3f}, "
              f"{len(r)} pairs); native {g.native.median():.2f} ms, peft {g.peft.median():.2f} ms")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
