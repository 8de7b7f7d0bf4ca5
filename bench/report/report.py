"""The report: when LoRA is slower than full fine-tuning, and why (report.md, report.html,
summary.csv and the plots). A failed, missing or unreadable record is listed as such and never
stops the report. The command line is bench/report/__main__.py.
"""
from __future__ import annotations

import base64
import fcntl
import html as html_lib
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import fixes, noise, plots, projection, stats, variants
from bench.report.costmodel import calibration_note
from bench.report.explain import (CATEGORY_NAMES, aggregate, explain, measured_deltas, settings, unstable_jobs,
                                  verdict)
from bench.record.store import write_text_atomic
from bench.report.load import load_records, markdown, with_ratios

MIB = 2 ** 20

# A block of the report: ("h2", text) | ("p", text) | ("ul", [text]) | ("table", DataFrame) | ("img", name, alt)
Block = tuple


def _f(x, spec=".2f", scale=1.0, suffix=""):
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return ""
    return format(x / scale, spec) + suffix


def _setting_title(s: dict, g: pd.DataFrame | None = None) -> str:
    accum = "" if s["grad_accum"] in (1, None) else f" x accum {s['grad_accum']}"
    path = s.get("model_path")
    model = f"{s['model']} from {path}" if isinstance(path, str) and path else s["model"]
    return (f"{model} (dim {_f(s['dim'], '.0f')}, {_f(s['n_layers'], '.0f')} layers), data={s['data']}, "
            f"batch {_f(s['batch_size'], '.0f')} x seq {_f(s['seq_len'], '.0f')}{accum}, {s['precision']}, "
            f"{s['mode']}{'' if s['ranks'] == 'single' else ', ' + s['ranks'] + ' ranks'}"
            f"{_lora_title(g) if g is not None else ''}, on {s['machine']}")


def _lora_title(g: pd.DataFrame) -> str:
    """What every LoRA job of the setting shares (its backend, the base's storage, DoRA, checkpointing),
    named whether or not it varies elsewhere: a QLoRA-only sweep says so at its top."""
    lora = g[g.uses_lora == True]  # noqa: E712
    one = lambda col, rows: (lambda v: v[0] if len(v) == 1 else None)(rows[col].dropna().astype(str).unique())  # noqa: E731
    parts = []
    backend, impl = one("backend", lora), one("impl", lora)
    if backend is not None:
        parts.append(f"LoRA by {backend}" + (f" ({impl} layer)" if backend == "native" and impl else ""))
    quant = one("quant", lora)
    if quant is not None:
        parts.append("dense base" if quant == "none" else f"{quant} 4-bit base (QLoRA)")
    if one("dora", lora) == "True":
        parts.append("DoRA")
    ckpt = one("checkpointing", g)
    if ckpt is not None and ckpt != "none":
        parts.append(f"activation checkpointing: {ckpt}")
    return "".join(f", {p}" for p in parts)


def _timing_table(agg: pd.DataFrame) -> pd.DataFrame:
    nan = [np.nan] * len(agg)
    return pd.DataFrame({
        "configuration": agg.label,
        "step ms": [_f(x) for x in agg.step_ms],
        "spread ms": [f"{_f(a)}-{_f(b)}" for a, b in zip(agg.spread_lo, agg.spread_hi)],
        "repeats": agg.repeats,
        "compared": agg.get("compared", [""] * len(agg)),
        "vs full": [_f(x, ".2f", suffix="x") for x in agg.get("vs_full", nan)],
        "95% interval": [f"{_f(a)}-{_f(b)}" if a == a else "" for a, b in zip(agg.get("vs_full_lo", nan),
                                                                            agg.get("vs_full_hi", nan))],
        "verdict": [{"slower": "slower", "faster": "faster", "same": "no difference",
                     "unjudged": "not judged (1 repeat)", "disturbed": "left out: measured on a busy machine"}.get(v, "")
                    for v in agg.get("verdict", [""] * len(agg))],
        "predicted vs full": [_f(x, ".2f", suffix="x") for x in agg.get("predicted_vs_full", [np.nan] * len(agg))],
        "tokens/s": [_f(x, ",.0f") for x in agg.tokens_per_s],
        "forward ms": [_f(x) for x in agg.forward_ms],
        "backward ms": [_f(x) for x in agg.backward_ms],
        "optimizer ms": [_f(x) for x in agg.optimizer_ms],
    })


def _tables(agg: pd.DataFrame, machine: str | None) -> list[Block]:
    full = agg[agg.baseline & ~agg.disturbed]
    ref = full.iloc[0] if not full.empty else None
    peak_kind = "peak device MiB" if agg.device_peak_bytes.notna().any() else "peak host RSS MiB"
    peak = agg.device_peak_bytes if agg.device_peak_bytes.notna().any() else agg.host_peak_rss_bytes
    timing = _timing_table(agg)
    work = pd.DataFrame({
        "configuration": agg.label,
        peak_kind: [_f(x, ".1f", MIB) for x in peak],
        "weights MiB": [_f(x, ".2f", MIB) for x in agg.weights_bytes],
        "gradients MiB": [_f(x, ".2f", MIB) for x in agg.grads_bytes],
        "optimizer state MiB": [_f(x, ".3f", MIB) for x in agg.optimizer_state_bytes],
        "optimizer state bytes": [_f(x, ",.0f") for x in agg.optimizer_state_bytes],
        "activations MiB": [_f(x, ".2f", MIB) for x in agg.activations_bytes],
        "trainable": [f"{_f(t, ',.0f')} ({_f(100 * t / n, '.2f')}%)" for t, n in zip(agg.params_trainable,
                                                                                     agg.params_total)],
        "GFLOP/step": [_f(x, ".3f", 1e9) for x in agg.flops_per_step],
        "FLOPs vs full": [_f(x) for x in agg.get("flops_vs_full", [np.nan] * len(agg))],
        "ops/step": [_f(x, ",.0f") for x in agg.ops_per_step],
        "ops vs full": [_f(x) for x in agg.get("ops_vs_full", [np.nan] * len(agg))],
    })
    loss = pd.DataFrame({
        "configuration": agg.label,
        "train loss (last step)": [_f(x, ".3f") for x in agg.loss_last],
        "eval loss": [_f(x, ".3f") for x in agg.eval_end],
        "gap to floor": [_f(a - b, ".3f") if b == b else "" for a, b in zip(agg.eval_end, agg.loss_floor)],
        "eval noise": [_f(x, ".4f") for x in agg.eval_noise],
        "eval loss gain per s": [_f(x, ".4f") for x in agg.loss_gain_per_s],
    })
    if agg.target_loss.notna().any():  # train.target_loss was set: how long each took to reach it
        target = agg.target_loss.dropna().iloc[0]
        loss[f"time to eval {target:g} (s)"] = [_f(x, ".2f") if x == x else "not reached" for x in agg.to_target_s]
        loss["steps to it"] = [_f(x, ".0f") if x == x else "" for x in agg.steps_to_target]
    blocks = [("h3", "Time"), ("table", timing),
              ("p", "step ms: median of the timed steps (median over repeats). spread ms: the range of the "
                    "repeats' medians where a configuration has several, else the p10-p90 of its timed steps. "
                    "vs full: the ratio to full fine-tuning; compared paired: each LoRA job's steps against full "
                    "fine-tuning's, stepped in turn in the same job (bench/measure/paired.py), so that the host's "
                    "drift between jobs cancels; by job: one job's steps against another's. 95% interval: a t "
                    "interval over repeats on the log scale, assuming the noise between repeats is alike across "
                    "this setting's configurations (pooled) and log-normal; with one "
                    "repeat only the job's own steps are resampled, which cannot see that noise, so no verdict is "
                    "drawn. A verdict needs the whole interval on one side of 1 and a difference of at least "
                    f"{stats.MIN_EFFECT:.0%}. " + noise.sentence(noise.read(machine), machine)),
              ("h3", "Memory and work"), ("table", work),
              ("h3", "Loss"), ("table", loss)]
    if ref is not None:
        cal = (f"Cost model constants, measured on this machine: matmul {ref.matmul_flops_per_s / 1e9:.1f} GFLOP/s, "
               f"{ref.op_overhead_s * 1e6:.2f} us per operation (full fine-tuning's records; each configuration is "
               f"priced with its own records' constants)." if ref.matmul_flops_per_s == ref.matmul_flops_per_s
               else "No calibration in these records: the cost model is not available.")
        blocks.insert(0, ("p", cal))
    return blocks


def _cell(c: pd.DataFrame, base: float) -> dict:
    """One map cell: the ratio of the stable ok LoRA records to full's, or why there is none."""
    okc = c[(c.status == "ok") & (c.unstable != True)]  # noqa: E712
    ratio = okc.step_ms.median() / base if not okc.empty else np.nan
    if ratio == ratio:
        note = ""
    elif not okc.empty:
        note = "full missing"
    elif (c.status == "ok").any():
        note = "unstable"
    else:
        note = "/".join(sorted(set(c.status)))
    return {"ratio": ratio, "note": note.upper() if note == "oom" else note}


def _crossover_blocks(df: pd.DataFrame, out: Path) -> list[Block]:
    """The crossover map, where records span more than one width or tokens-per-step value."""
    family = ["model", "data", "precision", "machine"]
    blocks = []
    rec = df[df.status.isin(["ok", "oom", "diverged", "invalid", "error"]) & df.dim.notna()]
    for n, (key, g) in enumerate(rec.groupby(family, dropna=False, sort=False)):
        if g.dim.nunique() < 2 and g.tokens_per_step.nunique() < 2:
            continue
        stable = g[(g.strategy == "full") & (g.status == "ok") & (g.unstable != True)]  # noqa: E712
        full = stable.groupby(["dim", "tokens_per_step"]).step_ms.median()
        for label, lg in g[g["rank"].notna()].groupby(["strategy", "rank"], sort=False):
            cells = [{"dim": dim, "tokens_per_step": tok, **_cell(c, full.get((dim, tok), np.nan))}
                     for (dim, tok), c in lg.groupby(["dim", "tokens_per_step"])]
            if not cells:
                continue
            name = f"crossover_{n}_{label[0]}_r{int(label[1])}"
            plots.crossover(pd.DataFrame(cells), f"{label[0]} r={int(label[1])}", out, name)
            blocks += [("h3", f"Crossover: {label[0]} r={int(label[1])} ({', '.join(map(str, key))})"),
                       ("img", name, f"crossover map of {label[0]} r={int(label[1])}")]
    if blocks:
        blocks.insert(0, ("h2", "Crossover: where LoRA stops being slower"))
        blocks.insert(1, ("p", "Each cell: median step time of the LoRA configuration divided by full "
                               "fine-tuning's, at that model width and tokens per step. Above 1, LoRA is slower. "
                               "A cell measured on a busy machine says so and is left empty."))
    return blocks


# Past this many settings (a crossover sweep has one per cell), the per-setting plots are left out:
# the crossover map draws the sweep, and hundreds of plot files would bury it.
MAX_SETTINGS_PLOTTED = 8


def _setting_blocks(n: int, setting: dict, g: pd.DataFrame, out: Path, plot: bool = True) -> list[Block]:
    agg = aggregate(g)
    title = _setting_title(setting, g)
    blocks = [("h2", f"Setting {n + 1}: {title}"), ("p", "Verdict. " + verdict(agg))]
    if agg.empty:
        return blocks
    blocks += _tables(agg, setting["machine"] if isinstance(setting["machine"], str) else None)
    full = agg[agg.baseline & ~agg.disturbed]
    suffix = f"_{n + 1}" if n else ""
    if not full.empty:
        blocks.append(("h3", "Why"))
        blocks.append(("ul", [explain(r, full.iloc[0]) for _, r in agg.iterrows()
                              if not r.baseline and not r.disturbed]))
        blocks += variants.blocks(agg)
        blocks += _difference_blocks(agg, full.iloc[0], title, out, "attribution" + suffix, plot)
    if not plot:
        return blocks
    for kind, fn in (("step_time_vs_rank", plots.step_time_vs_rank), ("time_split", plots.time_split),
                     ("memory_split", plots.memory_split), ("loss_vs_time", plots.loss_vs_time)):
        try:
            fn(agg, title, out, kind + suffix)
            blocks.append(("img", kind + suffix, kind.replace("_", " ")))
        except Exception as e:  # one plot must not cost the whole report
            blocks.append(("p", f"The {kind.replace('_', ' ')} plot failed: {type(e).__name__}: {e}"))
    return blocks


def _difference_blocks(agg: pd.DataFrame, full: pd.Series, title: str, out: Path, name: str,
                       plot: bool = True) -> list[Block]:
    """Where the difference goes: each configuration's profiled step against full's, by category."""
    rows = {r.label: measured_deltas(r, full) for _, r in agg.iterrows() if not r.baseline}
    rows = {k: v for k, v in rows.items() if v}
    if not rows:
        return []
    deltas = pd.DataFrame.from_dict(rows, orient="index")
    table = pd.DataFrame({"configuration": deltas.index,
                          **{CATEGORY_NAMES[c]: [_f(x, "+.2f") for x in deltas[c]] for c in deltas.columns},
                          "whole difference": [_f(x, "+.2f") for x in deltas.drop(columns="gpu_idle",
                                                                                   errors="ignore").sum(axis=1)]})
    blocks: list[Block] = [("h3", "Where the difference goes (measured)"), ("table", table),
                           ("p", "Milliseconds of one untimed step under torch.profiler, this configuration's "
                                 "less full fine-tuning's, by category (bench/measure/attribution.py). The profiler "
                                 "slows every operation, so these are shares of a longer step than the timed ones; "
                                 "framework is the step's wall time that no operation accounts for.")]
    if not plot:
        return blocks
    try:
        plots.attribution_deltas(deltas, title, out, name)
        blocks.append(("img", name, "where the difference goes"))
    except Exception as e:  # one plot must not cost the whole report
        blocks.append(("p", f"The attribution plot failed: {type(e).__name__}: {e}"))
    return blocks


def _failure_blocks(df: pd.DataFrame) -> list[Block]:
    failed = df[~df.status.isin(["ok", "duplicate", "copy"])]
    blocks: list[Block] = [("h2", "Records that did not end ok")]
    if failed.empty:
        blocks.append(("p", "None: every job ended ok." if len(df) else "None: there were no jobs."))
    else:
        blocks.append(("table", pd.DataFrame({
            "job": failed.path, "status": failed.status,
            "configuration": [" ".join(str(x) for x in (s, f"r={int(r)}" if r == r and r is not None else "")
                                       if x) for s, r in zip(failed.strategy, failed["rank"])],
            "failed at step": [_f(x, ".0f") for x in failed.failed_step],
            "reason": failed.reason.fillna("")})))
    copies = df[df.status == "copy"]
    if not copies.empty:
        blocks += [("h2", "Given twice"),
                   ("p", f"{len(copies)} records are the same measurement as another one read here (same machine, "
                         f"configuration, repeat and start time); each is counted once:"),
                   ("ul", [f"{p}: {r}" for p, r in zip(copies.path, copies.reason)])]
    dup = df[df.status == "duplicate"]
    if not dup.empty:
        blocks += [("h2", "Reported once"),
                   ("p", f"{len(dup)} jobs measured a configuration already measured in this sweep (their "
                         f"strategy ignores the keys that differed); each is reported once.")]
    return blocks


def build_report(dirs: list[Path], out: Path, html: bool = True, all_plots: bool = False) -> Path:
    """Read every record under `dirs`, write the report into `out`; returns report.md's path.
    Two processes building one report (two sweeps into one directory, each ending) take turns."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        return _build(dirs, out, html, all_plots)


def _build(dirs: list[Path], out: Path, html: bool, all_plots: bool) -> Path:
    df = load_records(dirs)
    projected = df[df.kind == "projected"] if not df.empty else df
    df = df[df.kind != "projected"] if not df.empty else df  # measured: every block below but the projection's
    n_projected = int((projected.status == "ok").sum()) if not projected.empty else 0
    what = f"{(df.status == 'ok').sum()} measured records"
    if n_projected:
        what += f" and {n_projected} PROJECTED (not measured) records"
    blocks: list[Block] = [("h1", "lora-bench report"),
                           ("p", f"{what} of {len(df) + len(projected)} job directories "
                                 f"under {', '.join(str(d) for d in dirs)}; built "
                                 f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}.")]
    running = int((df.status == "running").sum()) if not df.empty else 0
    if running:
        blocks.append(("p", f"{running} jobs were being measured by another process when this report was built: "
                            f"they are listed at the end and in no table; the report is rebuilt when that sweep ends "
                            f"(or: python -m bench.report {' '.join(str(d) for d in dirs)})."))
    note = calibration_note(df) if not df.empty else None
    if note:
        blocks.append(("p", note))
    warnings = unstable_jobs(df) if not df.empty else []
    if warnings:
        blocks += [("h2", "Warning: jobs measured on a busy machine"), ("ul", warnings)]
    table = with_ratios(df).drop(columns=["step_samples", "paired_samples"]) if not df.empty else \
        pd.DataFrame(columns=["path", "status", "reason"])  # the steps themselves stay in steps.jsonl
    table.to_csv(out / "summary.csv", index=False)
    groups = list(settings(df))
    plot = all_plots or len(groups) <= MAX_SETTINGS_PLOTTED
    if not plot:
        blocks.append(("p", f"{len(groups)} settings: their plots are left out (the crossover map below draws "
                            f"them); python -m bench.report <dirs> --all-plots draws every one."))
    for n, (setting, g) in enumerate(groups):
        try:
            blocks += _setting_blocks(n, setting, g, out, plot)
        except Exception as e:  # one setting must not cost the others
            blocks.append(("p", f"Setting {n + 1} could not be reported: {type(e).__name__}: {e}"))
    blocks += _crossover_blocks(df, out)
    blocks += fixes.fix_blocks(df)
    blocks += fixes.budget_blocks(df, out, plots.memory_budget)
    blocks += projection.blocks(projected, out, plots.projection)
    blocks += _failure_blocks(df)
    md = _render_md(blocks)
    write_text_atomic(out / "report.md", md)
    if html:  # plots embedded: one file to send, but heavy; the committed references skip it
        write_text_atomic(out / "report.html", _render_html(blocks, out))
    return out / "report.md"


def _render_md(blocks: list[Block]) -> str:
    lines = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in b[1]] + [""]
        elif kind == "table":
            lines += [markdown(b[1]), ""]
        elif kind == "img":
            lines += [f"![{b[2]}]({b[1]}.png)", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}img{max-width:100%}
li{margin:0.4em 0}.scroll{overflow-x:auto;max-width:100%}"""  # a wide table scrolls, not cut off


def _render_html(blocks: list[Block], out: Path) -> str:
    esc = html_lib.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lora-bench report</title>"
             f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3", "p"):
            parts.append(f"<{kind}>{esc(b[1])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b[1]) + "</ul>")
        elif kind == "table":
            parts.append("<div class='scroll'>" + b[1].to_html(index=False, escape=True, border=0) + "</div>")
        elif kind == "img":
            data = base64.b64encode((out / f"{b[1]}.png").read_bytes()).decode()
            parts.append(f"<p><img alt='{esc(b[2])}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)
