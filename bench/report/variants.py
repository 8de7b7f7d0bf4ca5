"""What each variant costs: QLoRA, DoRA and checkpointing against the same configuration without it.

Every ratio in a setting is taken against plain full fine-tuning (bench/report/explain.py). A variant
row (quant, dora or checkpointing set: bench/report/load.py VARIANTS) is also set against its
reference, the row with the same label and that one variant off, "QLoRA against LoRA":

    ratio = (t_variant / t_full) / (t_reference / t_full)

on the log scale the difference of the two estimates; its variance the sum of theirs (the shared
between-run term counted twice: conservative), its degrees of freedom the smaller of the two. Where
the reference is plain full fine-tuning itself, the ratio is the variant's own. The sentence then
names the measured terms a variant adds (the profiled step's dequantize, dora_norm and recompute
categories, against the reference's) and what it changes in memory.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.report import stats
from bench.report.explain import CATEGORY_NAMES, measured_deltas
from bench.report.load import VARIANTS

# The category each variant adds to the profiled step.
TERMS = {"quant": "dequantize", "dora": "dora_norm", "checkpointing": "recompute"}
NAMES = {"quant": "QLoRA", "dora": "DoRA", "checkpointing": "checkpointing"}


def _on(row: pd.Series) -> list[str]:
    return [k for k, plain in VARIANTS.items() if k in row and pd.notna(row[k]) and row[k] != plain]


def _key(row: pd.Series, off: str | None = None) -> tuple:
    """What identifies a row apart from variant `off` (switched off)."""
    return (row.strategy, row["rank"] if pd.notna(row["rank"]) else None,
            *[(VARIANTS[k] if k == off or pd.isna(row.get(k)) else row[k]) for k in VARIANTS])


def reference(agg: pd.DataFrame, row: pd.Series, variant: str) -> pd.Series | None:
    """The row that is `row` with `variant` off (None where the setting has none)."""
    want = _key(row, variant)
    for _, r in agg.iterrows():
        if not r.disturbed and _key(r) == want and r.label != row.label:
            return r
    return None


def relative(row: pd.Series, ref: pd.Series) -> stats.Estimate | None:
    """row's time over ref's, both taken against plain full fine-tuning, with its 95% interval."""
    if row.vs_full != row.vs_full or ref.vs_full != ref.vs_full:
        return None
    center = math.log(row.vs_full) - math.log(ref.vs_full)
    var = row.vs_full_se ** 2 + (0.0 if ref.baseline else ref.vs_full_se ** 2)
    calibrated = bool(row.calibrated) and (ref.baseline or bool(ref.calibrated))
    df = int(row.vs_full_df) if ref.baseline else int(min(row.vs_full_df, ref.vs_full_df))
    if not calibrated or df == 0 or var != var:
        # not judged: the interval is the two intervals' widths added on the log scale (no verdict)
        half = math.log(row.vs_full_hi / row.vs_full_lo) / 2 + (0.0 if ref.baseline else
                                                                math.log(ref.vs_full_hi / ref.vs_full_lo) / 2)
        return stats.Estimate(math.exp(center), math.exp(center - half), math.exp(center + half), False,
                              row.compared, int(row.repeats))
    half = stats.t_quantile(0.5 + stats.LEVEL / 2, df) * math.sqrt(var)
    return stats.Estimate(math.exp(center), math.exp(center - half), math.exp(center + half), True,
                          row.compared, int(row.repeats), math.sqrt(var), df)


def _memory(row: pd.Series, ref: pd.Series) -> str:
    parts = []
    for col, name in (("weights_bytes", "weights"), ("activations_bytes", "activations")):
        a, b = row.get(col), ref.get(col)
        if a == a and b == b and a is not None and b and a != b:
            parts.append(f"{name} {a / b:.2f}x")
    t, u = row.params_trainable, ref.params_trainable
    if t == t and u == u and t != u:
        parts.append(f"trainable {t - u:+,.0f} parameters")
    return ", ".join(parts)


def _sentence(row: pd.Series, ref: pd.Series, variant: str, e: stats.Estimate, full: pd.Series) -> str:
    word = {"slower": "slower", "faster": "faster", "same": "no measurable difference",
            "unjudged": "not judged (1 repeat)"}[stats.verdict(e.ratio, (e.lo, e.hi), e.calibrated)]
    head = (f"{row.label}: {e.ratio:.2f}x {ref.label}'s step (95% interval {e.lo:.2f}-{e.hi:.2f}, {word})")
    extra_ms = (e.ratio - 1) * ref.vs_full * full.step_ms  # in plain full fine-tuning's milliseconds
    head += f", {extra_ms:+.2f} ms per step ({extra_ms / full.step_ms:+.0%} of full fine-tuning's)"
    d = measured_deltas(row, ref)
    term = TERMS[variant]
    if d.get(term, 0.0) > 0.005:
        ranked = sorted((c for c in d if c != "gpu_idle"), key=lambda c: -d[c])
        largest = " (largest)" if ranked and ranked[0] == term else f" (largest: {CATEGORY_NAMES[ranked[0]]} " \
                                                                     f"{d[ranked[0]]:+.2f} ms)"
        head += f"; {CATEGORY_NAMES[term]} {d[term]:+.2f} ms on the profiled step{largest}"
    mem = _memory(row, ref)
    return head + (f"; {mem}" if mem else "") + "."


def table(agg: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per (variant row, variant it has on): its ratio to its reference, and the sentences."""
    base = agg[agg.baseline & ~agg.disturbed]
    if base.empty or "vs_full" not in agg:
        return pd.DataFrame(), []
    full = base.iloc[0]
    rows, lines = [], []
    for _, r in agg[~agg.disturbed & ~agg.baseline].iterrows():
        for variant in _on(r):
            ref = reference(agg, r, variant)
            e = None if ref is None else relative(r, ref)
            if e is None:
                continue
            verdict = stats.verdict(e.ratio, (e.lo, e.hi), e.calibrated)
            d = measured_deltas(r, ref).get(TERMS[variant], np.nan)
            rows.append({"configuration": r.label, "variant": NAMES[variant], "against": ref.label,
                         "step ratio": f"{e.ratio:.2f}x", "95% interval": f"{e.lo:.2f}-{e.hi:.2f}",
                         "verdict": {"same": "no difference", "unjudged": "not judged (1 repeat)"}.get(verdict, verdict),
                         f"{CATEGORY_NAMES[TERMS[variant]]} ms": "" if d != d else f"{d:+.2f}",
                         "memory": _memory(r, ref)})
            lines.append(_sentence(r, ref, variant, e, full))
    return pd.DataFrame(rows), lines


def blocks(agg: pd.DataFrame) -> list[tuple]:
    t, lines = table(agg)
    if t.empty:
        return []
    return [("h3", "Variants: each against the same configuration without it"), ("table", t),
            ("p", "step ratio: the variant's step over its reference's, both measured against full fine-tuning "
                  "(paired where both are), with a 95% t interval from the two estimates' variances; ms: the "
                  "measured category it adds, on the profiled step, against the reference's (dequantize: a 4-bit "
                  "base made dense for every product, forward and backward; DoRA's weight norm; recompute: the "
                  "checkpointed blocks' forward run again in backward)."), ("ul", lines)]
