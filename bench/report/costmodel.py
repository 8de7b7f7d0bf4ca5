"""The cost model behind "predicted vs full" and the priced terms of each Why sentence: a step
is FLOPs / matmul throughput + operations x cost per operation, both constants measured by each
job on its own host (bench/measure/calibrate.py). A comparison prices both sides with one pair of
constants, so the terms a sentence lists add up to the ratio it predicts.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def constants(row: pd.Series, full: pd.Series) -> tuple[float, float]:
    """The cost model's constants for one comparison: the configuration's own records' calibration
    (its jobs stepped full fine-tuning too, on the host as it was then), full fine-tuning's where it
    has none. One pair prices both sides: records measured minutes apart on a host whose speed moved
    (66-125 GFLOP/s on one machine in an hour) are not mixed within a comparison."""
    theta, c = row.get("matmul_flops_per_s"), row.get("op_overhead_s")
    if theta is None or theta != theta or c is None or c != c:
        theta, c = full.matmul_flops_per_s, full.op_overhead_s
    return theta, c


def predicted_ratio(row: pd.Series, full: pd.Series) -> float:
    """The cost model's step ratio to full fine-tuning: (full's priced step + the priced terms) /
    full's priced step, every figure at constants(): the sentence's terms add up to it."""
    if row.baseline:
        return 1.0
    theta, c = constants(row, full)
    base = 1e3 * (full.flops_per_step / theta + full.ops_per_step * c)
    tm = terms(row, full)
    return (base + tm["flops"] + tm["ops"]) / base


def terms(row: pd.Series, full: pd.Series) -> dict[str, float]:
    """Each term's contribution to (t_config - t_full), in ms; positive costs time."""
    theta, c = constants(row, full)
    out = {
        "flops": 1e3 * (row.flops_per_step - full.flops_per_step) / theta if theta == theta else np.nan,
        "ops": 1e3 * (row.ops_per_step - full.ops_per_step) * c if c == c else np.nan,
        "optimizer": row.optimizer_ms - full.optimizer_ms,
    }
    if row.backward_stops_early:  # the record's plan says so: nothing in the first block trains
        out["backward stops early"] = row.backward_ms - full.backward_ms
    return out


CALIBRATION_SPREAD = 1.25  # constants further apart than this (max/min) are named at the report's top


def calibration_note(df: pd.DataFrame) -> str | None:
    """A sentence for the report's top when its records come from several machines, or from one
    machine whose calibrations of the cost model differ (records of several sweeps): None otherwise."""
    ok = df[(df.status == "ok") & (df.kind != "projected")] if not df.empty else df
    ok = ok[ok.matmul_flops_per_s.notna() & ok.op_overhead_s.notna()] if not ok.empty else ok
    if ok.empty:
        return None
    out = []
    machines = ok.machine.dropna().unique()
    if len(machines) > 1:
        out.append(f"These records come from {len(machines)} machines ({'; '.join(map(str, machines))}): each "
                   f"machine's records are settings of their own, never compared with another's.")
    for m, g in ok.groupby("machine", dropna=False):
        th, c = g.matmul_flops_per_s, g.op_overhead_s
        if th.max() / th.min() > CALIBRATION_SPREAD or c.max() / c.min() > CALIBRATION_SPREAD:
            out.append(f"On {m}, the cost model's constants differ between these {len(g)} records (matmul "
                       f"{th.min() / 1e9:.1f}-{th.max() / 1e9:.1f} GFLOP/s, {c.min() * 1e6:.2f}-{c.max() * 1e6:.2f} us "
                       f"per operation: the host's speed moved between runs): each configuration is priced with its "
                       f"own records' constants, full fine-tuning's figures included, so its terms add up to its "
                       f"predicted ratio.")
    return " ".join(out) or None
