"""Load job records into pandas and print a compact comparison table.

    python -m bench.summary results/multirun/<time> [more dirs...]

Records are found recursively (metrics.json); one that cannot be read is named on stderr and
skipped, never fatal. Ratios compare each row with `full` of the same setting, in one table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.records import METRICS, read_metrics

# What makes two records comparable: same model, data, shape, precision and machine.
SETTING = ["model", "data", "batch_size", "seq_len", "grad_accum", "precision", "machine"]


def flatten(rec: dict, path: Path) -> dict:
    cfg = rec.get("config", {})
    train = cfg.get("train", {})
    t, m, w = rec.get("time") or {}, rec.get("memory") or {}, rec.get("work") or {}
    p, loss = rec.get("params") or {}, rec.get("loss") or {}
    med = lambda k: (t.get(k) or {}).get("median")  # noqa: E731
    peak = m.get("device_peak_allocated_bytes")
    return {
        "path": str(path.parent), "status": rec.get("status"), "reason": rec.get("reason"),
        "strategy": rec.get("strategy"), "rank": rec.get("rank"), "model": rec.get("model"),
        "data": (cfg.get("data") or {}).get("name"), "batch_size": train.get("batch_size"),
        "seq_len": train.get("seq_len"), "grad_accum": train.get("grad_accum"),
        "precision": train.get("precision"), "phases": train.get("phases"), "repeat": cfg.get("repeat"),
        "include_head": (cfg.get("lora") or {}).get("include_head"),
        "machine": (rec.get("env") or {}).get("machine"),
        "step_ms": med("step_ms"), "step_p10_ms": (t.get("step_ms") or {}).get("p10"),
        "step_p90_ms": (t.get("step_ms") or {}).get("p90"),
        "forward_ms": med("forward_ms"), "backward_ms": med("backward_ms"), "optimizer_ms": med("optimizer_ms"),
        "tokens_per_s": t.get("tokens_per_s"), "wall_s": t.get("wall_s"),
        "peak_bytes": peak if peak is not None else m.get("host_peak_rss_bytes"),
        "peak_kind": "device allocated" if peak is not None else "host RSS",
        "weights_bytes": m.get("weights_bytes"), "grads_bytes": m.get("grads_bytes"),
        "optimizer_state_bytes": m.get("optimizer_state_bytes"), "activations_bytes": m.get("activations_bytes"),
        "params_total": p.get("total"), "params_trainable": p.get("trainable"),
        "flops_per_step": w.get("flops_per_step"), "ops_per_step": w.get("ops_per_step"),
        "loss_last": loss.get("last"), "eval_end": loss.get("eval_end"), "loss_floor": loss.get("floor"),
    }


def load_records(dirs: list[Path], warn=print) -> pd.DataFrame:
    rows = []
    for d in dirs:
        d = Path(d)
        for path in sorted(d.rglob(METRICS)) if d.is_dir() else [d]:
            try:
                rows.append(flatten(read_metrics(path), path))
            except ValueError as e:
                warn(f"skipped: {e}")
    return pd.DataFrame(rows)


def with_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Add time, FLOP and op ratios to the median `full` record of the same setting."""
    df = df.copy()
    ok = df[df.status == "ok"]
    base = ok[ok.strategy == "full"].groupby(SETTING, dropna=False)[
        ["step_ms", "flops_per_step", "ops_per_step"]].median()
    base.columns = [f"full_{c}" for c in base.columns]
    df = df.merge(base, left_on=SETTING, right_index=True, how="left")
    for c in ("step_ms", "flops_per_step", "ops_per_step"):
        df[f"{c.split('_')[0]}_vs_full"] = df[c] / df[f"full_{c}"]
    return df


def table(df: pd.DataFrame) -> str:
    df = with_ratios(df)
    mib = 2 ** 20
    out = pd.DataFrame({
        "strategy": df.strategy, "rank": df["rank"].map(lambda r: "" if pd.isna(r) else int(r)),
        "status": df.status,
        "step ms (p10-p90)": [f"{a:.2f} ({b:.2f}-{c:.2f})" if a == a and a is not None else ""
                              for a, b, c in zip(df.step_ms, df.step_p10_ms, df.step_p90_ms)],
        "vs full": df.step_vs_full.map(lambda x: f"{x:.2f}x" if x == x else ""),
        "fwd/bwd/opt ms": [f"{a:.1f}/{b:.1f}/{c:.1f}" if a == a and a is not None else ""
                           for a, b, c in zip(df.forward_ms, df.backward_ms, df.optimizer_ms)],
        "peak MiB": (df.peak_bytes / mib).round(0),
        "opt state MiB": (df.optimizer_state_bytes / mib).round(2),
        "trainable": df.params_trainable.map(lambda x: f"{int(x):,}" if x == x else ""),
        "FLOPs vs full": df.flops_vs_full.map(lambda x: f"{x:.2f}" if x == x else ""),
        "ops vs full": df.ops_vs_full.map(lambda x: f"{x:.2f}" if x == x else ""),
        "eval loss": df.eval_end.round(3),
    })
    return markdown(out)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs the tabulate package)."""
    cells = [[str(c) for c in df.columns]] + [["" if pd.isna(v) else str(v) for v in row]
                                               for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        print(f"error: {missing[0]} does not exist", file=sys.stderr)
        return 2
    df = load_records(args.dirs, warn=lambda m: print(m, file=sys.stderr))
    if df.empty:
        print(f"error: no metrics.json under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    for setting, group in df.groupby(SETTING, dropna=False, sort=False):
        print("### " + ", ".join(f"{k}={v}" for k, v in zip(SETTING, setting)))
        print(table(group.sort_values(["strategy", "rank"], na_position="first")))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
