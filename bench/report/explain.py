"""Why a LoRA configuration is slower or faster than full fine-tuning, from the measurements.

Per setting, each configuration is compared with `full` of the same setting. The verdict follows
the ratio's 95% interval (bench/report/stats.py); jobs measured on a busy machine take no part.
The explanation leads with the measurement: the profiled step's category differences
(bench/measure/attribution.py). Then the cost model's terms:
- FLOPs: the weight-gradient GEMMs a frozen layer skips, minus the adapters' own work,
  priced at the calibrated matmul throughput;
- operations: the extra (or fewer) aten ops per step, priced at the calibrated per-op overhead;
- optimizer: the measured optimizer phase (AdamW updates only the trainable tensors);
- backward that stops early: the measured backward phase, where nothing below the first
  adapted or trained layer needs a gradient (lora_last, head_only, lora.layers).
The cost model's prediction (FLOPs / throughput + ops x overhead) is set against the measured
ratio where the measurement is conclusive, and a disagreement above 20% is stated, not hidden.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import noise, stats
from bench.report.costmodel import constants, predicted_ratio, terms
from bench.report.load import ATTRIBUTION, SETTING, strategy_label, variant_label, variant_suffix, varying_keys

DISAGREE = 0.20


def aggregate(df: pd.DataFrame, host_noise: bool = True) -> pd.DataFrame:
    """One row per configuration of one setting: medians over repeats, the spread, and each
    configuration's ratio to full fine-tuning with its 95% interval. Unstable jobs are left out, and
    a projected record (bench/project/) is never in it: nothing of it was measured."""
    ok = df[(df.status == "ok") & (df.kind != "projected")]
    keys = varying_keys(ok)
    ok = ok.assign(label=[variant_label(r, keys) for _, r in ok.iterrows()])
    stable = ok[ok.unstable != True]  # noqa: E712  (None: schema 1, not judged)
    rows = [_config_row(label, g) for label, g in stable.groupby("label", sort=False)]
    # A configuration measured only on a busy machine stays in the tables, marked, out of every verdict.
    rows += [{**_config_row(f"{label} (disturbed)", g), "disturbed": True}
             for label, g in ok[ok.unstable == True].groupby("label", sort=False)  # noqa: E712
             if label not in set(stable.label)]
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["disturbed"] = out.get("disturbed", pd.Series(False, index=out.index)).fillna(False).astype(bool)
    out["memory_split_bytes"] = out[["weights_bytes", "grads_bytes", "optimizer_state_bytes",
                                     "activations_bytes"]].sum(axis=1, min_count=1)
    out["predicted_ms"] = 1e3 * (out.flops_per_step / out.matmul_flops_per_s + out.ops_per_step * out.op_overhead_s)
    full = out[out.baseline & ~out.disturbed]
    if not full.empty:
        f = full.iloc[0]
        out["vs_full"] = out.step_ms / f.step_ms
        out["predicted_vs_full"] = [predicted_ratio(r, f) for _, r in out.iterrows()]
        out["flops_vs_full"] = out.flops_per_step / f.flops_per_step
        out["ops_vs_full"] = out.ops_per_step / f.ops_per_step
        est = estimates(out, setting_noise(ok) if host_noise else None)
        out["vs_full"] = [1.0 if r.baseline else (np.nan if e is None else e.ratio)
                          for (_, r), e in zip(out.iterrows(), est)]
        out["vs_full_lo"] = [np.nan if e is None else e.lo for e in est]
        out["vs_full_hi"] = [np.nan if e is None else e.hi for e in est]
        out["compared"] = ["" if e is None else e.basis for e in est]
        out["vs_full_se"] = [np.nan if e is None else e.se for e in est]
        out["vs_full_df"] = [0 if e is None else e.df for e in est]
        out["rep_var"] = [np.nan if e is None else e.rep_var for e in est]
        out["calibrated"] = [e is not None and e.calibrated for e in est]
        out["verdict"] = ["disturbed" if d else "" if e is None else stats.verdict(e.ratio, (e.lo, e.hi), e.calibrated)
                          for d, e in zip(out.disturbed, est)]
    return out


def _is_paired(row: pd.Series) -> bool:
    """Every repeat of this configuration has its paired baseline's pairs (at least 3)."""
    return not row.baseline and len(row.paired_logs) == row.repeats and all(len(x) >= 3 for x in row.paired_logs)


def setting_machine(df: pd.DataFrame) -> str | None:
    machines = df.machine.dropna().unique() if "machine" in df else []
    return str(machines[0]) if len(machines) == 1 else None


def setting_noise(df: pd.DataFrame):
    """The filed between-run term of the setting's machine, if one is filed and not expired."""
    return noise.usable(noise.read(setting_machine(df)))


def estimates(agg: pd.DataFrame, host=None) -> list:
    """Each configuration's calibrated ratio to full fine-tuning (bench/report/stats.py): paired
    where every repeat has pairs, else job against job; None for full itself and where no steps.
    `host`: the machine's between-run term (bench/report/noise.py), or None."""
    f = agg[agg.baseline & ~agg.disturbed].iloc[0]
    paired = [r for _, r in agg.iterrows() if _is_paired(r) and not r.disturbed]
    pooled_p = stats.pooled_variance([[np.median(x) for x in r.paired_logs] for r in paired])
    pooled_j = stats.pooled_variance([np.log(r.repeat_ms) for _, r in agg.iterrows() if not r.disturbed])
    out = []
    for _, r in agg.iterrows():
        if r.baseline or r.disturbed:
            out.append(None)
        elif _is_paired(r):
            out.append(stats.paired_estimate(r.paired_logs, pooled_p, host))
        else:
            out.append(stats.job_estimate(r.repeat_ms, f.repeat_ms, pooled_j, r.samples, f.samples, host))
    return out


_MEDIANS = ("forward_ms", "backward_ms", "optimizer_ms", "step_mean_ms", "forward_mean_ms", "backward_mean_ms",
            "optimizer_mean_ms", "attr_step_ms", *[f"attr_{c}_{u}" for c in ATTRIBUTION for u in ("ms", "ops")], "tokens_per_s", "device_peak_bytes", "host_peak_rss_bytes",
            "weights_bytes", "grads_bytes", "optimizer_state_bytes", "activations_bytes", "params_trainable",
            "params_total", "flops_per_step", "ops_per_step", "loss_last", "eval_end", "loss_floor", "train_s",
            "matmul_flops_per_s", "op_overhead_s", "to_target_s", "steps_to_target", "target_loss", "eval_noise",
            "allreduce_bytes", "allgather_bytes", "reducescatter_bytes", "comm_ms", "quant_bytes_before",
            "quant_bytes_after")


def _config_row(label: str, g: pd.DataFrame) -> dict:
    first, n = g.iloc[0], len(g)
    lo, hi = (g.step_ms.min(), g.step_ms.max()) if n > 1 else (first.step_p10_ms, first.step_p90_ms)
    med = lambda c: g[c].median() if g[c].notna().any() else np.nan  # noqa: E731
    drop = (g.eval_start - g.eval_end).median()
    return {
        "label": label, "strategy": first.strategy, "rank": first["rank"], "baseline": first.baseline == True,  # noqa: E712
        **{k: first[k] for k in ("quant", "dora", "checkpointing")},
        "backward_stops_early": bool(first.backward_stops_early),
        "repeats": n, "step_ms": g.step_ms.median(), "spread_lo": lo, "spread_hi": hi,
        "spread_kind": "range of the repeats' medians" if n > 1 else "p10-p90 of the timed steps",
        **{c: med(c) for c in _MEDIANS},
        "loss_drop": drop, "loss_gain_per_s": ((g.eval_start - g.eval_end) / g.train_s).median(),
        "samples": [np.asarray(s if isinstance(s, list) else [], dtype=float) for s in g.step_samples],
        "repeat_ms": [float(x) for x in g.step_ms],
        "rest_ops": next((x for x in g.attr_rest_ops if isinstance(x, dict) and x), {}),
        "paired_logs": [np.log(np.asarray(s, dtype=float)) for s in g.paired_samples if isinstance(s, list) and s],
        # Sweeps (folders of jobs) the repeats come from: a report may combine several.
        "runs": len({str(Path(p).parent) for p in g.path}),
        "paths": list(g.path),
    }


def unstable_jobs(df: pd.DataFrame) -> list[str]:
    """One line per job measured on a busy machine: its reason, whether its configuration still has
    a verdict (from its other, quiet repeats), and the command that measures it again in its own
    place, so that the sweep's report is rebuilt with it."""
    out = []
    ok = df[(df.status == "ok") & (df.kind != "projected")]
    keys = varying_keys(ok)
    label = pd.Series({i: variant_label(r, keys) for i, r in ok.iterrows()}, dtype=object)
    quiet_of = label[ok.unstable != True].value_counts()  # noqa: E712  (quiet repeats per configuration)
    for i, r in ok[ok.unstable == True].iterrows():  # noqa: E712
        quiet = int(quiet_of.get(label[i], 0))
        rest = (f"its other {quiet} repeat{'s' if quiet > 1 else ''} carry the configuration's verdict" if quiet
                else "no repeat of it was measured on a quiet machine, so the configuration is in no verdict")
        args = (r.overrides if isinstance(r.overrides, str) and r.overrides
                else f"strategy={r.strategy}" + (f" lora.rank={int(r['rank'])}" if pd.notna(r["rank"]) else ""))
        job = Path(r.path)
        repeat = f"repeat {int(r['repeat'])}: " if pd.notna(r.get("repeat")) else ""
        out.append(f"{r.path}: {strategy_label(r)}{variant_suffix(r)} was left out ({repeat}{r.unstable_reason}); "
                   f"{rest}. Measure it again in its place, which rebuilds this sweep's report: python -m bench.run "
                   f"-m {args} resume=false hydra.sweep.dir={job.parent} hydra.sweep.subdir={job.name}")
    return out


def _pct(x: float) -> str:
    return f"{abs(x) * 100:.0f}%"


def _signed_ms(x: float) -> str:
    return f"{x:+.2f} ms"


_NAMES = {  # (term, sign) -> how the sentence names it
    ("flops", -1): "the FLOPs it saves", ("flops", 1): "the adapters' extra FLOPs",
    ("ops", 1): "the extra operations", ("ops", -1): "the operations it does not dispatch",
    ("optimizer", -1): "the optimizer time it saves", ("optimizer", 1): "a slower optimizer step",
    ("backward stops early", -1): "the backward pass stopping early",
    ("backward stops early", 1): "a longer backward pass",
}


def _head(row: pd.Series, full: pd.Series) -> str:
    """The verdict, with the ratio t_config / t_full and its interval (the interval is of that ratio)."""
    ci = (f"95% interval {row.vs_full_lo:.2f}-{row.vs_full_hi:.2f}x" if row.vs_full_lo == row.vs_full_lo
          else "no interval: no timed steps on disk")
    basis = (f"{row.repeats} repeat{'s' if row.repeats > 1 else ''}"
             + (f" in {row.runs} sweeps" if row.runs > 1 else "") + f", {row.compared}")
    if row.compared == "paired":  # the jobs' own medians were measured at other moments: say which is which
        figures = (f"{row.vs_full:.2f}x stepped in turn with full fine-tuning; {ci}; {basis}; the jobs' own "
                   f"medians {row.step_ms:.2f} and {full.step_ms:.2f} ms per step")
    else:
        figures = f"{row.step_ms:.2f} vs {full.step_ms:.2f} ms per step, {row.vs_full:.2f}x; {ci}; {basis}"
    if row.verdict == "unjudged":
        return (f"{row.label}: not judged ({figures}): one repeat cannot see the noise between jobs; "
                f"repeats=2 or more measures it")
    if row.verdict == "same":
        return f"{row.label}: no measurable difference from full fine-tuning ({figures})"
    word, ratio = ("slower", row.vs_full) if row.verdict == "slower" else ("faster", 1 / row.vs_full)
    return f"{row.label}: {ratio:.2f}x {word} than full fine-tuning ({figures})"


CATEGORY_NAMES = {"base_matmul": "base matmuls", "adapter_matmul": "adapter matmuls",
                  "adapter_other": "other adapter operations", "attention": "attention",
                  "norm_activation_other": "norms, activations and the rest",
                  "dequantize": "dequantization", "dora_norm": "DoRA's weight norm", "recompute": "recompute",
                  "compiled": "compiled graphs", "communication": "communication", "gradients": "gradient accumulation",
                  "optimizer": "optimizer", "framework": "framework overhead", "gpu_idle": "GPU idle"}


def measured_deltas(row: pd.Series, full: pd.Series) -> dict[str, float]:
    """Per category, this configuration's profiled-step ms less full fine-tuning's (empty without both)."""
    out = {}
    for c in ATTRIBUTION:
        a, b = row.get(f"attr_{c}_ms"), full.get(f"attr_{c}_ms")
        if a == a and b == b and a is not None and b is not None:
            out[c] = a - b
    return out


def _measured(row: pd.Series, full: pd.Series) -> str:
    """The measured sentence: the profiled step's largest category differences, largest first."""
    d = measured_deltas(row, full)
    if not d:
        return ""
    sign = {"slower": 1, "faster": -1}.get(row.verdict, 0)
    ranked = sorted(d, key=lambda c: -d[c] * sign if sign else -abs(d[c]))
    named = [f"{CATEGORY_NAMES[c]} {_signed_ms(d[c])}" + (_rest(row, full) if c == "norm_activation_other" else "")
             for c in ranked[:3] if abs(d[c]) >= 0.005]
    return (f" Measured on a profiled step ({row.attr_step_ms:.2f} vs {full.attr_step_ms:.2f} ms): "
            + ", ".join(named) + ".")


def _rest(row: pd.Series, full: pd.Series) -> str:
    """What "the rest" holds: its largest operations, this configuration's against full's."""
    mine, theirs = row.get("rest_ops") or {}, full.get("rest_ops") or {}
    names = sorted(set(mine) | set(theirs), key=lambda n: -abs(mine.get(n, 0.0) - theirs.get(n, 0.0)))[:2]
    if not names:
        return ""
    return " (largest there: " + ", ".join(f"{n} {_signed_ms(mine.get(n, 0.0) - theirs.get(n, 0.0))}"
                                           for n in names) + ")"


def largest_cost(row: pd.Series, full: pd.Series) -> str:
    """The verdict line's answer to "why slower": the measured attribution first, the cost model second."""
    tm = {k: v for k, v in terms(row, full).items() if v == v and v > 0}
    model = _NAMES[(max(tm, key=tm.get), 1)] if tm else "no modelled term"
    d = {c: v for c, v in measured_deltas(row, full).items() if v > 0 and c != "gpu_idle"}
    if not d:
        return f"{model} (cost model)"
    top = max(d, key=d.get)
    return f"{CATEGORY_NAMES[top]} {_signed_ms(d[top])} (measured); the cost model's: {model}"


_COLLECTIVES = (("allreduce", "all-reduces"), ("allgather", "all-gathers"), ("reducescatter", "reduce-scatters"))


def _communication(row: pd.Series, full: pd.Series) -> str:
    """What the ranks exchanged per step, against full fine-tuning's (multi-process jobs only)."""
    parts = []
    for kind, verb in _COLLECTIVES:
        a, b = row.get(f"{kind}_bytes"), full.get(f"{kind}_bytes")
        if a is None or b is None or a != a or b != b or not (a or b):
            continue
        share = f"{a / b:.1%} of" if b else "more than"
        what = " (the frozen weights travel too)" if kind == "allgather" and a >= 0.9 * b else ""
        parts.append(f"{verb} {a / 2**20:.2f} MiB per step, {share} full fine-tuning's{what}")
    if not parts:
        return ""
    ms = row.get("comm_ms"), full.get("comm_ms")
    blocked = (f"; blocked in communication {ms[0]:.2f} vs {ms[1]:.2f} ms on the profiled step"
               if all(m is not None and m == m for m in ms) else "")
    return " Communication: it " + ", ".join(parts) + blocked + "."


def explain(row: pd.Series, full: pd.Series) -> str:
    """One or two sentences for one configuration against full fine-tuning of its setting: the
    verdict, then where the time went as measured, then the cost model's terms."""
    parts = []
    fl, op = row.flops_per_step / full.flops_per_step - 1, row.ops_per_step / full.ops_per_step - 1
    parts.append(f"{_pct(fl)} {'fewer' if fl < 0 else 'more'} FLOPs and {_pct(op)} "
                 f"{'fewer' if op < 0 else 'more'} operations per step")
    tm = terms(row, full)
    if tm["flops"] == tm["flops"]:
        theta, c = constants(row, full)
        parts.append(f"priced: FLOPs {_signed_ms(tm['flops'])} at {theta / 1e9:.0f} GFLOP/s, "
                     f"operations {_signed_ms(tm['ops'])} at {c * 1e6:.1f} us each")
    parts.append(f"measured optimizer {row.optimizer_ms:.2f} vs {full.optimizer_ms:.2f} ms")
    if "backward stops early" in tm:
        parts.append(f"backward {row.backward_ms:.2f} vs {full.backward_ms:.2f} ms")
    measured = _measured(row, full) + _communication(row, full)
    sentence = _head(row, full) + "." + measured + " " + ("The cost model's terms: " if measured else "") \
        + "; ".join(parts) + "."
    if row.verdict in ("slower", "faster"):
        sign = 1 if row.verdict == "slower" else -1
        candidates = {k: v for k, v in tm.items() if v == v and np.sign(v) == sign}
        if candidates:
            top = max(candidates, key=lambda k: abs(candidates[k]))
            which = "modelled term" if measured else "term"
            sentence += f" The largest {which} in that direction: {_NAMES[(top, sign)]} ({_signed_ms(candidates[top])})."
        else:
            sentence += " None of the modelled terms points that way."
    pred, meas = row.predicted_vs_full, row.vs_full
    if pred != pred:
        return sentence
    if row.verdict not in ("slower", "faster"):
        return sentence + f" The cost model predicts {pred:.2f}x; the measurement cannot tell them apart."
    if abs(pred / meas - 1) > DISAGREE:
        return sentence + (f" The cost model predicts {pred:.2f}x, measured {meas:.2f}x: they disagree by more than "
                           f"{DISAGREE:.0%}, so costs outside the model (memory traffic of non-matmul ops, "
                           f"kernel efficiency at these sizes) matter here.")
    return sentence + f" The cost model predicts {pred:.2f}x, measured {meas:.2f}x."


def _mem(row: pd.Series) -> tuple[float, str]:
    if row.device_peak_bytes == row.device_peak_bytes and row.device_peak_bytes is not None:
        return row.device_peak_bytes, "peak device memory"
    return row.memory_split_bytes, "weights + gradients + optimizer state + activations"


def _best(agg: pd.DataFrame, values: pd.Series, lowest: bool) -> str:
    """The configuration with the lowest (or highest) value; several with the same value are a tie."""
    top = values.min() if lowest else values.max()
    winners = list(agg.label[values == top])
    if len(winners) == 1:
        return winners[0]
    named = ", ".join(winners[:3]) + (f" and {len(winners) - 3} more" if len(winners) > 3 else "")
    return f"a tie between {len(winners)} configurations ({named})"


def _loss_verdict(agg: pd.DataFrame) -> str:
    """Best loss per second, among configurations whose eval loss fell by more than the eval noise."""
    if agg.eval_noise.isna().all():
        return ("No loss verdict: these records carry no eval noise (it needs train.eval_batches of 2 or more; "
                "records older than schema 2 have none).")
    clear = agg[(agg.loss_drop > 2 * agg.eval_noise) & (agg.loss_gain_per_s > 0)]
    if clear.empty:
        return ("No loss verdict: no configuration's eval loss fell by more than twice its held-out noise "
                "(standard error over the eval batches).")
    best = _best(clear, clear.loss_gain_per_s, lowest=False)
    return (f"Best loss per second: {best} (eval loss down {clear.loss_gain_per_s.max():.3g} per second of "
            f"training; only the {len(clear)} of {len(agg)} configurations whose eval loss fell by more than "
            f"twice its noise compete).")


def verdict(agg: pd.DataFrame) -> str:
    """The paragraph that opens a setting: fastest, least memory, best loss per second, slow LoRA."""
    agg = agg[~agg.disturbed] if "disturbed" in agg else agg
    if agg.empty:
        return "No stable successful record in this setting."
    mems = agg.apply(lambda r: _mem(r)[0], axis=1)
    mem_kind = _mem(agg.loc[mems.idxmin()])[1]
    s = [f"Fastest: {_best(agg, agg.step_ms, lowest=True)} ({agg.step_ms.min():.2f} ms per step).",
         f"Least memory: {_best(agg, mems, lowest=True)} ({mems.min() / 2**20:.1f} MiB of {mem_kind}).",
         _loss_verdict(agg)]
    full = agg[agg.baseline]
    if full.empty:
        s.append("No full fine-tuning record in this setting, so nothing to compare LoRA with.")
        return " ".join(s)
    f = full.iloc[0]
    slower = [r for _, r in agg.iterrows() if not r.baseline and r.verdict == "slower"]
    if slower:
        reasons = []
        for r in slower:
            reasons.append(f"{r.label} ({r.vs_full:.2f}x, 95% interval {r.vs_full_lo:.2f}-{r.vs_full_hi:.2f}; "
                           f"largest cost: {largest_cost(r, f)})")
        s.append("Slower than full fine-tuning: " + ", ".join(reasons) + ".")
    else:
        s.append("No configuration is measurably slower than full fine-tuning here.")
    return " ".join(s)


def settings(df: pd.DataFrame):
    """(setting dict, its records) for every setting with at least one ok measured record."""
    ok = df[(df.status == "ok") & (df.kind != "projected")]
    for key, g in ok.groupby(SETTING, dropna=False, sort=False):
        yield dict(zip(SETTING, key)), g
