"""Our LoRA layers (eager, fused) against PEFT's from a `+study=backends` sweep: paired ratios.

    python -m bench.run +study=backends
    python benchmarks/backends.py results/multirun/<time>

Each (repeat, strategy, rank, alpha) ran the eager, fused and PEFT layers back to back; a layer's
ratio of median step times to PEFT's in that group is one paired measurement. Below 1.00, ours is
faster. The scale is alpha/rank (alpha null: scale 1, where the eager layer skips its multiply).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.report.load import load_records


def main(sweep: Path) -> int:
    df = load_records([sweep])
    df = df[df.status == "ok"]
    df = df.assign(alpha=df.alpha.fillna(df["rank"]),  # alpha null means alpha = rank
                   layer=[("peft" if b == "peft" else (i or "eager")) for b, i in zip(df.backend, df.impl)])
    pairs = df.pivot_table(index=["strategy", "rank", "alpha", "repeat"], columns="layer", values="step_ms").dropna()
    ours = [c for c in ("eager", "fused") if c in pairs.columns]
    if pairs.empty or "peft" not in pairs.columns or not ours:
        print(f"error: {sweep} holds no groups of our layer and PEFT's", file=sys.stderr)
        return 2
    print(f"machine: {df.machine.iloc[0]}; model {df.model.iloc[0]}, batch {int(df.batch_size.iloc[0])} x seq "
          f"{int(df.seq_len.iloc[0])}, {df.precision.iloc[0]}")
    for (strategy, rank, alpha), g in pairs.groupby(level=["strategy", "rank", "alpha"]):
        parts = []
        for layer in ours:
            r = (g[layer] / g["peft"]).to_numpy()
            parts.append(f"{layer}/peft median {np.median(r):.3f} (range {r.min():.3f}-{r.max():.3f})")
        times = ", ".join(f"{c} {g[c].median():.2f} ms" for c in (*ours, "peft"))
        print(f"{strategy} r={int(rank)} scale {alpha / rank:g}, {len(g)} groups: {'; '.join(parts)}; {times}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1])))
