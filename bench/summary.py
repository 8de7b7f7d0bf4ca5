"""Load job records into pandas, one row per record, and compare each with full fine-tuning.

    python -m bench.summary results/multirun/<time> [more dirs...]

Every job directory gives a row: a record that cannot be read is a row with status
`unreadable`, a job directory with no record is `missing`; neither stops anything.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.records import METRICS, read_metrics

# What makes two records comparable: same model shape, data, batch, precision and machine.
SETTING = ["model", "dim", "n_layers", "data", "batch_size", "seq_len", "grad_accum", "precision", "machine"]
# Keys that may vary between rows of one setting; those that do, label the rows.
VARIANT_KEYS = ["rank", "include_head", "layers", "targets", "dropout", "init", "alpha", "rslora",
                "lr_ratio", "lr", "phases", "backend"]


def flatten(rec: dict, path: Path) -> dict:
    cfg = rec.get("config") or {}
    train, lora, model = cfg.get("train") or {}, cfg.get("lora") or {}, cfg.get("model") or {}
    t, m, w = rec.get("time") or {}, rec.get("memory") or {}, rec.get("work") or {}
    p, loss, cal = rec.get("params") or {}, rec.get("loss") or {}, rec.get("calibration") or {}
    step = t.get("step_ms") or {}
    med = lambda k: (t.get(k) or {}).get("median")  # noqa: E731
    peak = m.get("device_peak_allocated_bytes")
    as_text = lambda v: None if v is None else str(v)  # noqa: E731  (lists as one hashable value)
    return {
        "path": str(path.parent), "status": rec.get("status"), "reason": rec.get("reason"),
        "failed_step": rec.get("failed_step"), "same_as": rec.get("same_as"),
        "config_key": rec.get("config_key"),
        "strategy": rec.get("strategy"), "rank": rec.get("rank"), "model": rec.get("model"),
        "dim": (rec.get("model_shape") or model).get("dim"),
        "n_layers": (rec.get("model_shape") or model).get("n_layers"),
        "data": (cfg.get("data") or {}).get("name"), "batch_size": train.get("batch_size"),
        "seq_len": train.get("seq_len"), "grad_accum": train.get("grad_accum"),
        "precision": train.get("precision"), "lr": train.get("lr"), "phases": train.get("phases"),
        "repeat": cfg.get("repeat"), "backend": lora.get("backend", "native"),
        "include_head": lora.get("include_head") if rec.get("strategy") == "lora_all" else None,
        "layers": as_text(lora.get("layers")) if rec.get("rank") else None,
        "targets": as_text(lora.get("targets")) if rec.get("rank") else None,
        "dropout": lora.get("dropout") if rec.get("rank") else None,
        "init": lora.get("init") if rec.get("rank") else None,
        "alpha": lora.get("alpha") if rec.get("rank") else None,
        "rslora": lora.get("rslora") if rec.get("rank") else None,
        "lr_ratio": lora.get("lr_ratio") if rec.get("rank") else None,
        "machine": (rec.get("env") or {}).get("machine"),
        "tokens_per_step": w.get("tokens_per_step"),
        "step_ms": step.get("median"), "step_p10_ms": step.get("p10"), "step_p90_ms": step.get("p90"),
        "forward_ms": med("forward_ms"), "backward_ms": med("backward_ms"), "optimizer_ms": med("optimizer_ms"),
        "tokens_per_s": t.get("tokens_per_s"), "train_s": t.get("train_s"), "wall_s": t.get("wall_s"),
        "to_target_s": t.get("to_target_s"), "steps_to_target": t.get("steps_to_target"),
        "target_loss": train.get("target_loss"),
        "device_peak_bytes": peak, "host_peak_rss_bytes": m.get("host_peak_rss_bytes"),
        "weights_bytes": m.get("weights_bytes"), "grads_bytes": m.get("grads_bytes"),
        "optimizer_state_bytes": m.get("optimizer_state_bytes"), "activations_bytes": m.get("activations_bytes"),
        "params_total": p.get("total"), "params_trainable": p.get("trainable"),
        "flops_per_step": w.get("flops_per_step"), "ops_per_step": w.get("ops_per_step"),
        "loss_first": loss.get("first"), "loss_last": loss.get("last"),
        "eval_start": loss.get("eval_start"), "eval_end": loss.get("eval_end"), "loss_floor": loss.get("floor"),
        "matmul_flops_per_s": cal.get("matmul_flops_per_s"), "op_overhead_s": cal.get("op_overhead_s"),
    }


def _job_dirs(root: Path):
    """Directories that hold a record, or that Hydra made for a job (.hydra/) and got none."""
    found = {p.parent for p in root.rglob(METRICS)} | {p.parent for p in root.rglob(".hydra")}
    return sorted(found, key=lambda d: [int(x) if x.isdigit() else x for x in d.parts])


def load_records(dirs: list[Path], warn=None) -> pd.DataFrame:
    rows = []
    for d in map(Path, dirs):
        for job in ([d.parent] if d.is_file() else _job_dirs(d)):
            path = job / METRICS
            if not path.exists():
                rows.append({"path": str(job), "status": "missing", "reason": "the job left no metrics.json"})
                continue
            try:
                rows.append(flatten(read_metrics(path), path))
            except ValueError as e:
                rows.append({"path": str(job), "status": "unreadable", "reason": str(e)})
                if warn:
                    warn(f"skipped: {e}")
    df = pd.DataFrame(rows)
    for col in flatten({}, Path("x/m.json")):
        if col not in df:
            df[col] = None
    return df


def variant_label(row, keys: list[str]) -> str:
    """'lora_all r=8' plus any other key that varies within the setting."""
    parts = [str(row["strategy"])]
    if pd.notna(row.get("rank")):
        parts.append(f"r={int(row['rank'])}")
    for k in keys:
        if k != "rank" and pd.notna(row.get(k)):
            parts.append(f"{k}={row[k]}")
    return " ".join(parts)


def varying_keys(df: pd.DataFrame) -> list[str]:
    return [k for k in VARIANT_KEYS if k in df and df[k].dropna().astype(str).nunique() > 1]


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


def markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (pandas' to_markdown needs the tabulate package)."""
    cells = [[str(c) for c in df.columns]] + [["" if pd.isna(v) else str(v) for v in row]
                                               for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines)


def _fmt(x, spec: str) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def table(df: pd.DataFrame) -> str:
    df = with_ratios(df[df.status.isin(["ok"])])
    keys = varying_keys(df)
    mib = 2 ** 20
    out = pd.DataFrame({
        "configuration": [variant_label(r, keys) for _, r in df.iterrows()],
        "step ms (p10-p90)": [f"{_fmt(a, '.2f')} ({_fmt(b, '.2f')}-{_fmt(c, '.2f')})"
                              for a, b, c in zip(df.step_ms, df.step_p10_ms, df.step_p90_ms)],
        "vs full": [_fmt(x, ".2f") + "x" if x == x else "" for x in df.step_vs_full],
        "fwd/bwd/opt ms": [f"{_fmt(a, '.1f')}/{_fmt(b, '.1f')}/{_fmt(c, '.1f')}"
                           for a, b, c in zip(df.forward_ms, df.backward_ms, df.optimizer_ms)],
        "opt state MiB": [_fmt(x / mib, ".2f") for x in df.optimizer_state_bytes],
        "trainable": [_fmt(int(x), ",") if x == x else "" for x in df.params_trainable],
        "FLOPs vs full": [_fmt(x, ".2f") for x in df.flops_vs_full],
        "ops vs full": [_fmt(x, ".2f") for x in df.ops_vs_full],
        "eval loss": [_fmt(x, ".3f") for x in df.eval_end],
    })
    return markdown(out)


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
        print(f"error: no job records under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    ok = df[df.status == "ok"]
    for setting, group in ok.groupby(SETTING, dropna=False, sort=False):
        print("### " + ", ".join(f"{k}={v}" for k, v in zip(SETTING, setting)))
        print(table(group.sort_values(["strategy", "rank"], na_position="first")))
        print()
    for _, r in df[~df.status.isin(["ok", "duplicate"])].iterrows():
        print(f"[{r.status}] {r.path}: {r.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
