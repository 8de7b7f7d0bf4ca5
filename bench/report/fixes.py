"""The report's answers about fixes: does each fix remove LoRA's slowdown, and what does it cost
(+study=fixes); and what LoRA's saved memory buys at equal memory (+study=memory_budget).

A fix is a way of running the same configuration: the fused layer (lora.impl=fused), a compiled
step (train.compile), a replayed CUDA graph (train.cuda_graphs) or another AdamW (train.adamw_impl).
Each configuration is set against full fine-tuning run plainly (eager), the baseline a user has
today, and against full fine-tuning run the same way, which says whether LoRA is still slower once
both use the fix.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.report import stats
from bench.report.explain import setting_noise
from bench.report.load import SETTING, strategy_label, variant_suffix

MIB = 2 ** 20
FAMILY = [k for k in SETTING if k != "mode"]  # a fix changes the mode, not the setting


def _fix(row) -> str:
    impl = row["impl"] if isinstance(row["impl"], str) else None
    parts = [p for p in (impl if impl == "fused" else None, None if row["mode"] == "eager" else row["mode"]) if p]
    return " + ".join(parts) or "none"


def _ratio(g: pd.DataFrame, base: pd.DataFrame, pooled: tuple[float, int], host=None) -> tuple[float, tuple | None, str]:
    """Job against job (a fix changes how the step runs: no paired baseline runs the same way)."""
    if base.empty:
        return np.nan, None, ""
    e = stats.job_estimate(list(g.step_ms), list(base.step_ms), pooled,
                           [np.asarray(x, dtype=float) for x in g.step_samples],
                           [np.asarray(x, dtype=float) for x in base.step_samples], host)
    if e is None:
        return np.nan, None, ""
    return e.ratio, (e.lo, e.hi), stats.verdict(e.ratio, (e.lo, e.hi), e.calibrated)


def _text(ratio: float, interval, verdict: str) -> str:
    if ratio != ratio:
        return ""
    span = f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else ""
    word = {"slower": "slower", "faster": "faster", "same": "no difference", "unjudged": "not judged (1 repeat)"}[verdict]
    return f"{ratio:.2f}x{span}, {word}"


def _peak(g: pd.DataFrame) -> float:
    dev = g.device_peak_bytes.dropna()
    return (dev if len(dev) else g.host_peak_rss_bytes.dropna()).median()


def fixes_table(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration and fix of one setting family."""
    ok = ok.assign(fix=[_fix(r) for _, r in ok.iterrows()], config=[strategy_label(r) for _, r in ok.iterrows()])
    plain_full = ok[(ok.strategy == "full") & (ok.fix == "none")]
    rows = []
    groups = ok.groupby(["config", "fix"], sort=False)
    pooled = stats.pooled_variance([np.log(g.step_ms.to_numpy(dtype=float)) for _, g in groups])
    host = setting_noise(ok)
    for (config, fix), g in groups:
        same_mode_full = ok[(ok.strategy == "full") & (ok["mode"] == g["mode"].iloc[0])]
        r_plain = _ratio(g, plain_full, pooled, host)
        r_same = _ratio(g, same_mode_full, pooled, host) if g.strategy.iloc[0] != "full" else (np.nan, None, "")
        rows.append({"configuration": config, "fix": fix, "step ms": f"{g.step_ms.median():.2f}",
                     "vs plain full": _text(*r_plain), "vs full with the same mode": _text(*r_same),
                     "compile s": "" if g.compile_s.isna().all() else f"{g.compile_s.median():.1f}",
                     "peak MiB": f"{_peak(g) / MIB:.0f}", "ops/step": _ops(g), "repeats": len(g),
                     "_verdict_same": r_same[2], "_strategy": g.strategy.iloc[0]})
    return pd.DataFrame(rows)


def _ops(g: pd.DataFrame) -> str:
    ops = g.ops_per_step.dropna()
    if not len(ops):
        return ""
    kind = g.ops_kind.dropna().iloc[0] if g.ops_kind.notna().any() else "aten"
    return f"{ops.median():.0f}" + ("" if kind == "aten" else f" ({kind})")


def fix_blocks(df: pd.DataFrame) -> list[tuple]:
    ok = df[(df.status == "ok") & (df.unstable != True)]  # noqa: E712
    blocks: list[tuple] = []
    for key, g in ok.groupby(FAMILY, dropna=False, sort=False):
        if g.assign(fix=[_fix(r) for _, r in g.iterrows()]).fix.nunique() < 2:
            continue
        table = fixes_table(g)
        title = ", ".join(f"{k} {v}" for k, v in zip(FAMILY, key) if k in ("model", "dim", "batch_size", "seq_len",
                                                                               "precision", "machine"))
        blocks += [("h3", f"Fixes: {title}"), ("table", table.drop(columns=["_verdict_same", "_strategy"])),
                   ("ul", _fix_findings(table))]
    if blocks:
        blocks.insert(0, ("h2", "Fixes: does each one remove LoRA's slowdown, and at what cost?"))
        blocks.insert(1, ("p", "Each configuration's median step time against full fine-tuning run plainly "
                               "(eager, the usual baseline) and against full fine-tuning run with the same mode "
                               "(compiled or CUDA graphs), job against job, with 95% t intervals over repeats (the "
                               "variance between repeats pooled over the table; one repeat: not judged). Compile s: "
                               "compiling or "
                               "capturing, off every clock. Ops/step: aten operations unless the kind is given "
                               "(profiled: the profiled step's top-level calls, compiled graphs among them). "
                               "Peak MiB: the device's peak allocation; on a CPU the process's RSS high-water "
                               "mark, which the earlier jobs of a sweep (one process) hold up: compare it on a "
                               "GPU, or from single runs."))
    return blocks


def _fix_findings(table: pd.DataFrame) -> list[str]:
    out = []
    for _, r in table[table._strategy != "full"].iterrows():
        state = {"slower": "still slower than", "faster": "faster than", "same": "level with",
                 "unjudged": "not judged against"}.get(r._verdict_same)
        if state is None:
            continue
        out.append(f"{r.configuration} with fix {r.fix}: {state} full fine-tuning run the same way "
                   f"({r['vs full with the same mode']}); against plain full: {r['vs plain full']}.")
    return out


def budget_blocks(df: pd.DataFrame, out, plot) -> list[tuple]:
    """Throughput at equal memory: each searched configuration at the largest batch its budget allowed."""
    s = df[df.best_batch.notna() | df.search_probes.notna()] if "best_batch" in df else df.iloc[0:0]
    if s.empty:
        return []
    rows = []
    for _, r in s.iterrows():
        probes = r.search_probes or []
        rows.append({"configuration": strategy_label(r) + variant_suffix(r), "budget GiB": f"{r.budget_gb:g}",
                     "largest batch": "" if r.best_batch != r.best_batch else f"{int(r.best_batch)}",
                     "tokens/s there": "" if r.status != "ok" else f"{r.tokens_per_s:,.0f}",
                     "peak MiB": "" if r.status != "ok" else f"{_peak(pd.DataFrame([r])) / MIB:.0f}",
                     "stopped by": r.search_stopped_by,
                     "probes": ", ".join(f"{p['batch_size']} {'fits' if p['fits'] else p['status']}" for p in probes)})
    table = pd.DataFrame(rows)
    blocks = [("h2", "Throughput at equal memory"),
              ("p", "For each configuration, the largest batch whose job stayed within the memory budget (a bounded "
                    "doubling-then-bisecting search; every probe is a job record, the oom ones included), and "
                    "its tokens per second there. On CUDA the budget is the allocator's limit; on a CPU it caps the "
                    "process's resident memory, Python and torch included."), ("table", table)]
    full = s[(s.baseline == True) & (s.status == "ok")]  # noqa: E712
    if not full.empty:
        f = full.tokens_per_s.median()
        blocks.append(("ul", [f"{strategy_label(r)}{variant_suffix(r)}: {r.tokens_per_s / f:.2f}x full fine-tuning's tokens/s at the same "
                              f"budget (batch {int(r.best_batch)} against {int(full.best_batch.max())})"
                              for _, r in s[(s.baseline != True) & (s.status == "ok")].iterrows()]))  # noqa: E712
    try:
        plot(s, out, "memory_budget")
        blocks.append(("img", "memory_budget", "tokens per second against peak memory, per configuration"))
    except Exception as e:  # one plot must not cost the report
        blocks.append(("p", f"The memory-budget plot failed: {type(e).__name__}: {e}"))
    return blocks
