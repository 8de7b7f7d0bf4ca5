"""Why a LoRA configuration is slower or faster than full fine-tuning, from the measurements.

Per setting, each configuration is compared with `full` of the same setting. The terms:
- FLOPs: the weight-gradient GEMMs a frozen layer skips, minus the adapters' own work,
  priced at the calibrated matmul throughput;
- operations: the extra (or fewer) aten ops per step, priced at the calibrated per-op overhead;
- optimizer: the measured optimizer phase (AdamW updates only the trainable tensors);
- backward that stops early: the measured backward phase, where nothing below the first
  adapted or trained layer needs a gradient (lora_last, head_only, lora.layers).
The cost model's prediction (FLOPs / throughput + ops x overhead) is set against the measured
ratio, and a disagreement above 20% is stated, not hidden.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report.load import SETTING, variant_label, varying_keys

DISAGREE = 0.20


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of one setting: medians over repeats and the spread."""
    ok = df[df.status == "ok"]
    keys = varying_keys(ok)
    ok = ok.assign(label=[variant_label(r, keys) for _, r in ok.iterrows()])
    rows = []
    for label, g in ok.groupby("label", sort=False):
        first = g.iloc[0]
        n = len(g)
        step = g.step_ms.median()
        lo, hi = (g.step_ms.min(), g.step_ms.max()) if n > 1 else (first.step_p10_ms, first.step_p90_ms)
        med = lambda c: g[c].median() if g[c].notna().any() else np.nan  # noqa: E731
        improvement = (g.eval_start - g.eval_end) / g.train_s
        rows.append({
            "label": label, "strategy": first.strategy, "rank": first["rank"],
            "backward_stops_early": bool(first.backward_stops_early),
            "repeats": n, "step_ms": step, "spread_lo": lo, "spread_hi": hi,
            "spread_kind": "range over repeats" if n > 1 else "p10-p90 of steps",
            **{c: med(c) for c in ("forward_ms", "backward_ms", "optimizer_ms", "tokens_per_s",
                                   "device_peak_bytes", "host_peak_rss_bytes", "weights_bytes", "grads_bytes",
                                   "optimizer_state_bytes", "activations_bytes", "params_trainable",
                                   "params_total", "flops_per_step", "ops_per_step", "loss_last", "eval_end",
                                   "loss_floor", "train_s", "matmul_flops_per_s", "op_overhead_s",
                                   "to_target_s", "steps_to_target", "target_loss")},
            "loss_gain_per_s": improvement.median(),
            "paths": list(g.path),
        })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["memory_split_bytes"] = out[["weights_bytes", "grads_bytes", "optimizer_state_bytes",
                                     "activations_bytes"]].sum(axis=1, min_count=1)
    out["predicted_ms"] = 1e3 * (out.flops_per_step / out.matmul_flops_per_s + out.ops_per_step * out.op_overhead_s)
    full = out[out.strategy == "full"]
    if not full.empty:
        f = full.iloc[0]
        out["vs_full"] = out.step_ms / f.step_ms
        out["predicted_vs_full"] = out.predicted_ms / f.predicted_ms
        out["flops_vs_full"] = out.flops_per_step / f.flops_per_step
        out["ops_vs_full"] = out.ops_per_step / f.ops_per_step
    return out


def _pct(x: float) -> str:
    return f"{abs(x) * 100:.0f}%"


def _signed_ms(x: float) -> str:
    return f"{x:+.2f} ms"


def terms(row: pd.Series, full: pd.Series) -> dict[str, float]:
    """Each term's contribution to (t_config - t_full), in ms; positive costs time."""
    theta, c = full.matmul_flops_per_s, full.op_overhead_s
    out = {
        "flops": 1e3 * (row.flops_per_step - full.flops_per_step) / theta if theta == theta else np.nan,
        "ops": 1e3 * (row.ops_per_step - full.ops_per_step) * c if c == c else np.nan,
        "optimizer": row.optimizer_ms - full.optimizer_ms,
    }
    if row.backward_stops_early:  # the record's plan says so: nothing in the first block trains
        out["backward stops early"] = row.backward_ms - full.backward_ms
    return out


_NAMES = {  # (term, sign) -> how the sentence names it
    ("flops", -1): "the FLOPs it saves", ("flops", 1): "the adapters' extra FLOPs",
    ("ops", 1): "the extra operations", ("ops", -1): "the operations it does not dispatch",
    ("optimizer", -1): "the optimizer time it saves", ("optimizer", 1): "a slower optimizer step",
    ("backward stops early", -1): "the backward pass stopping early",
    ("backward stops early", 1): "a longer backward pass",
}


def explain(row: pd.Series, full: pd.Series) -> str:
    """One or two sentences for one configuration against full fine-tuning of its setting."""
    t, tf = row.step_ms, full.step_ms
    overlap = row.spread_lo <= full.spread_hi and full.spread_lo <= row.spread_hi
    if overlap:
        head = (f"{row.label}: no measurable difference from full fine-tuning ({t:.2f} vs {tf:.2f} ms per step; "
                f"the spreads overlap)")
    else:
        ratio = t / tf
        word = "slower" if ratio > 1 else "faster"
        head = (f"{row.label}: {max(ratio, 1 / ratio):.2f}x {word} than full fine-tuning "
                f"({t:.2f} vs {tf:.2f} ms per step)")
    parts = []
    fl, op = row.flops_per_step / full.flops_per_step - 1, row.ops_per_step / full.ops_per_step - 1
    parts.append(f"{_pct(fl)} {'fewer' if fl < 0 else 'more'} FLOPs and {_pct(op)} "
                 f"{'fewer' if op < 0 else 'more'} operations per step")
    tm = terms(row, full)
    if tm["flops"] == tm["flops"]:
        parts.append(f"priced: FLOPs {_signed_ms(tm['flops'])} at {full.matmul_flops_per_s / 1e9:.0f} GFLOP/s, "
                     f"operations {_signed_ms(tm['ops'])} at {full.op_overhead_s * 1e6:.1f} us each")
    parts.append(f"measured optimizer {row.optimizer_ms:.2f} vs {full.optimizer_ms:.2f} ms")
    if "backward stops early" in tm:
        parts.append(f"backward {row.backward_ms:.2f} vs {full.backward_ms:.2f} ms")
    sentence = head + ". " + "; ".join(parts) + "."
    if not overlap:
        sign = 1 if t > tf else -1
        candidates = {k: v for k, v in tm.items() if v == v and np.sign(v) == sign}
        if candidates:
            top = max(candidates, key=lambda k: abs(candidates[k]))
            sentence += f" The largest term in that direction: {_NAMES[(top, sign)]} ({_signed_ms(candidates[top])})."
        else:
            sentence += " None of the modelled terms points that way."
    pred, meas = row.predicted_vs_full, row.vs_full
    if pred == pred:
        if abs(pred / meas - 1) > DISAGREE:
            sentence += (f" The cost model predicts {pred:.2f}x, measured {meas:.2f}x: they disagree by more than "
                         f"{DISAGREE:.0%}, so costs outside the model (memory traffic of non-matmul ops, "
                         f"kernel efficiency at these sizes) matter here.")
        else:
            sentence += f" The cost model predicts {pred:.2f}x, measured {meas:.2f}x."
    return sentence


def _mem(row: pd.Series) -> tuple[float, str]:
    if row.device_peak_bytes == row.device_peak_bytes and row.device_peak_bytes is not None:
        return row.device_peak_bytes, "peak device memory"
    return row.memory_split_bytes, "weights + gradients + optimizer state + activations"


def verdict(agg: pd.DataFrame) -> str:
    """The paragraph that opens a setting: fastest, least memory, best loss per second, slow LoRA."""
    if agg.empty:
        return "No successful record in this setting."
    fastest = agg.loc[agg.step_ms.idxmin()]
    mems = agg.apply(lambda r: _mem(r)[0], axis=1)
    least = agg.loc[mems.idxmin()]
    mem_kind = _mem(least)[1]
    s = [f"Fastest: {fastest.label} ({fastest.step_ms:.2f} ms per step).",
         f"Least memory: {least.label} ({mems.min() / 2**20:.1f} MiB of {mem_kind})."]
    gains = agg.loss_gain_per_s
    if gains.notna().any():
        best = agg.loc[gains.idxmax()]
        s.append(f"Best loss per second: {best.label} (eval loss down {best.loss_gain_per_s:.3g} per second "
                 f"of training).")
    full = agg[agg.strategy == "full"]
    if full.empty:
        s.append("No full fine-tuning record in this setting, so nothing to compare LoRA with.")
        return " ".join(s)
    f = full.iloc[0]
    slower = [r for _, r in agg.iterrows() if r.strategy != "full" and r.spread_lo > f.spread_hi]
    if slower:
        reasons = []
        for r in slower:
            tm = {k: v for k, v in terms(r, f).items() if v == v and v > 0}
            why = _NAMES[(max(tm, key=tm.get), 1)] if tm else "no modelled term"
            reasons.append(f"{r.label} ({r.step_ms / f.step_ms:.2f}x; largest cost: {why})")
        s.append("Slower than full fine-tuning: " + ", ".join(reasons) + ".")
    else:
        s.append("No configuration is measurably slower than full fine-tuning here.")
    return " ".join(s)


def settings(df: pd.DataFrame):
    """(setting dict, its records) for every setting with at least one ok record."""
    ok = df[df.status == "ok"]
    for key, g in ok.groupby(SETTING, dropna=False, sort=False):
        yield dict(zip(SETTING, key)), g
