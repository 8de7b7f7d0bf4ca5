"""`python -m bench.report DIR [DIR...] [--out OUT]`: the report, rebuilt from records on disk.

Reads records (never memory), so it can be rebuilt at any time and can combine sweeps and
machines. Writes report.md, report.html (one self-contained file, plots embedded), summary.csv
(one row per record, failures included) and the plots as PNG and SVG. `--table` prints a compact
table per setting instead, for a terminal.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.load import SETTING, load_records, markdown, variant_label, varying_keys, with_ratios
from bench.record.store import METRICS
from bench.report.report import build_report


def _fmt(x, spec: str) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def compact_table(df: pd.DataFrame) -> str:
    """One setting's ok records as a short Markdown table."""
    df = with_ratios(df[df.status == "ok"])
    keys = varying_keys(df)
    several = df["repeat"].nunique(dropna=True) > 1  # rows of one configuration, told apart
    out = pd.DataFrame({
        "configuration": [variant_label(r, keys) + (f" (repeat {_fmt(r['repeat'], '.0f')})" if several else "")
                          for _, r in df.iterrows()],
        "step ms (p10-p90)": [f"{_fmt(a, '.2f')} ({_fmt(b, '.2f')}-{_fmt(c, '.2f')})"
                              for a, b, c in zip(df.step_ms, df.step_p10_ms, df.step_p90_ms)],
        "vs full": [_fmt(x, ".2f") + "x" if x == x else "" for x in df.step_vs_full],
        "fwd/bwd/opt ms": [f"{_fmt(a, '.1f')}/{_fmt(b, '.1f')}/{_fmt(c, '.1f')}"
                           for a, b, c in zip(df.forward_ms, df.backward_ms, df.optimizer_ms)],
        "opt state MiB": [_fmt(x / 2**20, ".2f") for x in df.optimizer_state_bytes],
        "trainable": [_fmt(int(x), ",") if x == x else "" for x in df.params_trainable],
        "FLOPs vs full": [_fmt(x, ".2f") for x in df.flops_vs_full],
        "ops vs full": [_fmt(x, ".2f") for x in df.ops_vs_full],
        "eval loss": [_fmt(x, ".3f") for x in df.eval_end],
    })
    return markdown(out)


def print_tables(dirs: list[Path]) -> int:
    df = load_records(dirs, warn=lambda m: print(m, file=sys.stderr))
    if df.empty:
        print(f"error: no job records under {', '.join(map(str, dirs))}", file=sys.stderr)
        return 2
    for setting, group in df[df.status == "ok"].groupby(SETTING, dropna=False, sort=False):
        print("### " + ", ".join(f"{k}={v}" for k, v in zip(SETTING, setting)))
        print(compact_table(group.sort_values(["strategy", "rank", "repeat"], na_position="first")))
        print()
    for _, r in df[~df.status.isin(["ok", "duplicate"])].iterrows():
        print(f"[{r.status}] {r.path}: {r.reason}")
    return 0


def _has_records(dirs: list[Path]) -> bool:
    return any(next(d.rglob(METRICS), None) is not None if d.is_dir() else d.name == METRICS for d in dirs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="sweep or run directories (searched recursively)")
    ap.add_argument("--out", type=Path, help="where to write (default: DIR/report for one DIR)")
    ap.add_argument("--table", action="store_true", help="print a compact table per setting; write nothing")
    ap.add_argument("--no-html", action="store_true", help="skip report.html (the committed references do)")
    ap.add_argument("--all-plots", action="store_true", help="plot every setting, however many there are")
    args = ap.parse_args(argv)
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        print(f"error: {missing[0]} does not exist", file=sys.stderr)
        return 2
    if args.table:
        return print_tables(args.dirs)
    if not _has_records(args.dirs):
        print(f"error: no job records (metrics.json) under {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    if args.out is None and len(args.dirs) > 1:
        print("error: several directories need --out DIR", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0] / "report"
    print(f"report: {build_report(args.dirs, out, html=not args.no_html, all_plots=args.all_plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
