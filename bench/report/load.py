"""Load job records into pandas, one row per record.

Every job directory gives a row: a record that cannot be read is a row with status
`unreadable`, a job directory with no record is `missing`; neither stops anything.
Records are read through the typed schema (bench/record/schema.py), so every figure here is
an attribute of a checked section; only the recorded configuration is a free-form mapping.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.record.claim import owner
from bench.record.schema import Identity, Record, RecordError
from bench.record.store import METRICS, PROBES, RANKS, STEPS, read_record, read_steps

# What makes two records comparable: same model shape, data, batch, precision and machine.
# `mode` is how the step runs (eager, compiled, CUDA graphs; AdamW's implementation where train.adamw_impl
# names one): a compiled LoRA step is compared with a compiled full step; bench/report/fixes.py compares
# across modes.
# `ranks` is how many processes and how (single, 2 x ddp, 2 x fsdp): LoRA on 2 DDP ranks is compared
# with full fine-tuning on 2 DDP ranks.
SETTING = ["model", "model_path", "dim", "n_layers", "data", "batch_size", "seq_len", "grad_accum", "precision", "mode", "ranks",
           "machine"]
# Keys that may vary between rows of one setting; those that do, label the rows.
VARIANT_KEYS = ["rank", "include_head", "layers", "targets", "dropout", "init", "alpha", "rslora",
                "lr_ratio", "lr", "phases", "backend", "impl", "adapter_dtype", "quant", "dora", "checkpointing"]
# The variants of bench/report/variants.py: a row with one of these set is compared with the same
# row without it. Their plain values (records older than the keys ran plain).
VARIANTS = {"quant": "none", "dora": False, "checkpointing": "none"}
# LoRA keys that label a row only where the strategy uses LoRA.
_LORA_KEYS = ("layers", "targets", "dropout", "init", "alpha", "rslora", "lr_ratio")


def config_value(rec: Record, dotted: str) -> Any:
    """A value of the configuration the job ran with; None where that configuration had no such
    key (records older than the key, or a job refused before its configuration was complete)."""
    cur: Any = rec.config
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def model_path(rec: Record) -> str:
    """Where a Hugging Face model came from (a local directory or a hub id), or the checkpoint a
    native model started from; "" for a preset built from its shapes alone (a string either way:
    it is a grouping key)."""
    for key in ("model.path", "model.checkpoint"):
        v = config_value(rec, key)
        if isinstance(v, str) and v and v != "auto":
            return v
    return "pretrained base (model.checkpoint=auto)" if config_value(rec, "model.checkpoint") == "auto" else ""


def _text(v: Any) -> str | None:
    return None if v is None else str(v)  # lists as one hashable value


def _tokens(rec: Record) -> int | None:
    """Tokens per step: measured, or for a job refused before measuring, from its configuration
    (so a refused cell still has its place on a crossover map)."""
    if rec.work is not None:
        return rec.work.tokens_per_step
    parts = [config_value(rec, k) for k in ("train.batch_size", "train.seq_len", "train.grad_accum")]
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in parts)
    return parts[0] * parts[1] * parts[2] if ok else None


def _stability(rec: Record) -> dict:
    st = rec.stability
    return {"unstable": None if st is None else st.unstable, "unstable_reason": None if st is None else st.reason,
            "wait_fraction": None if st is None else st.wait_fraction, "drift": None if st is None else st.drift}


# The attribution's categories (bench/measure/attribution.py), as the analysis reads them.
ATTRIBUTION = ("base_matmul", "adapter_matmul", "adapter_other", "attention", "norm_activation_other",
               "dequantize", "dora_norm", "recompute", "compiled", "communication", "gradients", "optimizer", "framework", "gpu_idle")


def _attribution(rec: Record) -> dict:
    a = rec.attribution
    out = {"attr_step_ms": None if a is None else a.step_ms, "attr_rest_ops": None if a is None else a.rest_ops}
    for c in ATTRIBUTION:
        out[f"attr_{c}_ms"] = None if a is None else a.categories.get(c)
        out[f"attr_{c}_ops"] = None if a is None else a.ops.get(c)
    return out


def mode(rec: Record) -> str:
    """How the step ran; records older than these keys ran eager, with the device's AdamW."""
    base = "CUDA graphs" if config_value(rec, "train.cuda_graphs") else \
        "compiled" if config_value(rec, "train.compile") else "eager"
    impl = config_value(rec, "train.adamw_impl")
    if impl in (None, "default"):
        return base
    return f"AdamW {impl}" if base == "eager" else f"{base} + AdamW {impl}"


def ranks(rec: Record) -> str:
    n, how = config_value(rec, "dist.nproc"), config_value(rec, "dist.mode")
    return "single" if not n or n == 1 else f"{n} x {how}" + mixed(rec)


def mixed(rec: Record) -> str:
    """', bf16 mixed precision' where FSDP2's policy ran (dist.mixed_precision); '' otherwise."""
    mp = config_value(rec, "dist.mixed_precision")
    return "" if mp in (None, "none") else f", {mp} mixed precision"


def _variants(rec: Record, uses_lora: bool, strategy: str | None) -> dict:
    """QLoRA, DoRA and checkpointing as the job ran them; `baseline`: plain full fine-tuning, what
    every ratio is taken against."""
    ckpt = config_value(rec, "train.checkpointing") or VARIANTS["checkpointing"]
    q = rec.quant
    return {"quant": (config_value(rec, "quant.base") or VARIANTS["quant"]) if uses_lora else None,
            "dora": bool(config_value(rec, "lora.dora")) if uses_lora else None,
            "checkpointing": ckpt, "baseline": strategy == "full" and ckpt == VARIANTS["checkpointing"],
            "quant_bytes_before": None if q is None else q.bytes_before,
            "quant_bytes_after": None if q is None else q.bytes_after}


def _paired(rec: Record) -> dict:
    p = rec.paired
    return {"paired_ratio": None if p is None else p.ratio, "paired_pairs": None if p is None else p.pairs,
            "paired_skipped": None if p is None else p.skipped}


def _comm(rec: Record) -> dict:
    c = rec.comm
    return {f"{k}_bytes": None if c is None else getattr(c, f"{k}_bytes_per_step")
            for k in ("allreduce", "allgather", "reducescatter")} | {"comm_ms": None if c is None else c.comm_ms}


def _search(rec: Record) -> dict:
    s = rec.search
    return {"budget_gb": None if s is None else s.budget_gb, "best_batch": None if s is None else s.best_batch,
            "search_stopped_by": None if s is None else s.stopped_by,
            "search_probes": None if s is None else [vars(p) for p in s.probes]}


def _sections(rec: Record) -> dict:
    """The measured figures: every field of the typed sections, None where a section is absent."""
    t, m, w, p, loss, cal = rec.time, rec.memory, rec.work, rec.params, rec.loss, rec.calibration
    a = lambda obj, name: None if obj is None else getattr(obj, name)  # noqa: E731
    med = lambda name: None if t is None else getattr(t, name).median  # noqa: E731
    return {
        "flops_per_step": a(w, "flops_per_step"),
        "ops_per_step": a(w, "ops_per_step"),
        "step_ms": med("step_ms"), "step_p10_ms": None if t is None else t.step_ms.p10,
        "step_p90_ms": None if t is None else t.step_ms.p90,
        "forward_ms": med("forward_ms"), "backward_ms": med("backward_ms"), "optimizer_ms": med("optimizer_ms"),
        # Means add up (a step's phases sum to at most the step); medians of phases need not.
        **{f"{k}_mean_ms": None if t is None else getattr(t, f"{k}_ms").mean
           for k in ("step", "forward", "backward", "optimizer")},
        "tokens_per_s": a(t, "tokens_per_s"), "train_s": a(t, "train_s"), "wall_s": a(t, "wall_s"),
        "compile_s": a(t, "compile_s"), "ops_kind": a(w, "ops_kind"),
        "to_target_s": a(t, "to_target_s"), "steps_to_target": a(t, "steps_to_target"),
        "device_peak_bytes": a(m, "device_peak_allocated_bytes"), "host_peak_rss_bytes": a(m, "host_peak_rss_bytes"),
        "weights_bytes": a(m, "weights_bytes"), "grads_bytes": a(m, "grads_bytes"),
        "optimizer_state_bytes": a(m, "optimizer_state_bytes"), "activations_bytes": a(m, "activations_bytes"),
        "params_total": a(p, "total"), "params_trainable": a(p, "trainable"),
        "loss_first": a(loss, "first"), "loss_last": a(loss, "last"), "eval_start": a(loss, "eval_start"),
        "eval_end": a(loss, "eval_end"), "loss_floor": a(loss, "floor"), "eval_noise": a(loss, "eval_noise"),
        "matmul_flops_per_s": a(cal, "matmul_flops_per_s"), "op_overhead_s": a(cal, "op_overhead_s"),
    }


def flatten(rec: Record, path: Path) -> dict:
    i, o, plan = rec.identity, rec.outcome, rec.plan
    shape = rec.model_shape
    uses_lora = plan.uses_lora if plan is not None else i.rank is not None
    lora = {k: (_text if k in ("layers", "targets") else (lambda v: v))(config_value(rec, f"lora.{k}"))
            if uses_lora else None for k in _LORA_KEYS}
    return {
        "path": str(path.parent), "status": rec.status, "reason": o and o.reason,
        "failed_step": o and o.failed_step, "same_as": o and o.same_as, "config_key": i.config_key,
        "strategy": i.strategy, "rank": i.rank, "model": i.model, "model_path": model_path(rec), "backend": i.backend,
        "include_head": i.include_head, "repeat": i.repeat, "started": i.started,
        "impl": (config_value(rec, "lora.impl") or "eager") if uses_lora and i.backend != "peft" else None,
        "adapter_dtype": (config_value(rec, "lora.adapter_dtype") or "base") if uses_lora and i.backend != "peft"
        else None,
        "mode": mode(rec), "ranks": ranks(rec), "mixed": mixed(rec), **_variants(rec, uses_lora, i.strategy),
        "uses_lora": uses_lora, "backward_stops_early": plan.backward_stops_early if plan else None,
        "dim": shape.dim if shape else config_value(rec, "model.dim"),
        "n_layers": shape.n_layers if shape else config_value(rec, "model.n_layers"),
        "data": config_value(rec, "data.name"), "batch_size": config_value(rec, "train.batch_size"),
        "seq_len": config_value(rec, "train.seq_len"), "grad_accum": config_value(rec, "train.grad_accum"),
        "precision": config_value(rec, "train.precision"), "lr": config_value(rec, "train.lr"),
        "phases": config_value(rec, "train.phases"), "target_loss": config_value(rec, "train.target_loss"),
        **lora, "machine": rec.env.machine if rec.env else None, **_sections(rec), **_stability(rec),
        **_attribution(rec), **_search(rec), **_comm(rec), **_paired(rec), "tokens_per_step": _tokens(rec),
        "overrides": " ".join(i.overrides) if i.overrides is not None else None,
        "kind": rec.kind, "projection": None if rec.projection is None else dataclasses.asdict(rec.projection),
    }


COLUMNS = list(flatten(Record(status="error", identity=Identity(config_key=""), config={}), Path("x/m.json")))


def _job_dirs(root: Path):
    """Directories that hold a record, or that Hydra made for a job (.hydra/) and got none. A memory-
    budget search's probes and a multi-process job's ranks are not jobs of the sweep: the job's own
    record carries their figures."""
    found = {p.parent for p in root.rglob(METRICS)} | {p.parent for p in root.rglob(".hydra")}
    found = {d for d in found if not {PROBES, RANKS} & set(d.relative_to(root).parts)}
    # Natural order (2 before 10), and never a comparison of a number with a name.
    return sorted(found, key=lambda d: [(0, int(x), "") if x.isdigit() else (1, 0, x) for x in d.parts])


def damage(rec: Record) -> list[str]:
    """What makes an `ok` record unusable for the report, one item per field: a measured section
    missing, a timing that is missing (NaN is written as null), not finite, or negative."""
    if rec.status != "ok":
        return []
    if rec.kind == "projected":
        return [] if rec.projection is not None else ["projection: missing"]
    out = [f"{name}: missing" for name in REQUIRED if getattr(rec, name) is None]
    t = rec.time
    if t is not None:
        for name in ("step_ms", "forward_ms", "backward_ms", "optimizer_ms"):
            v = getattr(t, name).median
            if v is None and name == "step_ms":
                out.append("time.step_ms.median: missing")
            elif v is not None and (not math.isfinite(v) or v < 0 or (name == "step_ms" and v == 0)):
                out.append(f"time.{name}.median: {v!r} is not a positive time")
    p = rec.paired
    if p is not None and p.ratio is not None and not (math.isfinite(p.ratio) and p.ratio > 0):
        out.append(f"paired.ratio: {p.ratio!r} is not a positive ratio")
    return out


def steps_mismatch(rec: Record, samples: list[float]) -> str | None:
    """Why a record's step log is not the one its figures came from (None: it is, or there is none):
    the median of the logged timed steps must be the record's median step. A log another process
    wrote into, or a record left from another attempt, fails this."""
    if rec.status != "ok" or rec.kind == "projected" or rec.time is None or not samples:
        return None
    logged, recorded = float(np.median(samples)), rec.time.step_ms.median
    if recorded is None or math.isclose(logged, recorded, rel_tol=1e-6, abs_tol=1e-9):
        return None
    return (f"its steps.jsonl does not match it (median timed step {logged:.4g} ms in the log, {recorded:.4g} ms "
            f"in the record): left out")


# The sections an ok record must hold for the report to use it (bench/report/report.py reads them all).
REQUIRED = ("env", "plan", "params", "work", "memory", "time", "loss")


def _same_job(row: dict) -> tuple | None:
    """What makes two records the same measurement: machine, configuration, repeat and start time."""
    if row.get("started") is None:
        return None
    return row.get("machine"), row.get("config_key"), row.get("repeat"), row["started"]


def _mark_copies(rows: list[dict]) -> None:
    """A record given twice (the same folder named twice, or copied into another) counts once;
    the copies are named, not dropped."""
    first: dict[tuple, str] = {}
    for row in rows:
        key = _same_job(row) if row.get("status") == "ok" else None
        if key is None:
            continue
        if key in first:
            row["status"], row["reason"] = "copy", f"the same record as {first[key]} (counted once)"
        else:
            first[key] = row["path"]


def load_records(dirs: list[Path], warn=None) -> pd.DataFrame:
    rows = []
    seen: set[Path] = set()  # a folder given twice (or inside another given) is read once
    for d in map(Path, dirs):
        for job in ([d.parent] if d.is_file() else _job_dirs(d)):
            if job.resolve() in seen:
                continue
            seen.add(job.resolve())
            path = job / METRICS
            held = owner(job)
            if held is not None:  # another process is measuring it: nothing there is final yet
                rows.append({"path": str(job), "status": "running",
                             "reason": f"being measured by {held.describe()} when this report was built"})
                continue
            if not path.exists():
                rows.append({"path": str(job), "status": "missing", "reason": "the job left no metrics.json"})
                continue
            try:
                rec = read_record(path)
                bad = damage(rec)
                if bad:
                    raise RecordError(f"{path}: status ok, but " + "; ".join(bad))
                rows.append(flatten(rec, path))
                # The timed steps themselves, and the paired baseline's pairs (own / full): the
                # samples behind every ratio's interval.
                steps = read_steps(job / STEPS)
                rows[-1]["step_samples"] = [r["step_ms"] for r in steps
                                            if r.get("kind") == "timed" and r.get("step_ms") is not None]
                mismatch = steps_mismatch(rec, rows[-1]["step_samples"])
                if mismatch:
                    rows.pop()
                    raise RecordError(f"{path}: {mismatch}")
                rows[-1]["paired_samples"] = [r["step_ms"] / r["base_ms"] for r in steps if r.get("kind") == "paired"
                                              and r.get("step_ms") and r.get("base_ms")]
            except RecordError as e:
                rows.append({"path": str(job), "status": "unreadable", "reason": str(e)})
                if warn:
                    warn(f"skipped: {e}")
    _mark_copies(rows)
    df = pd.DataFrame(rows)
    missing = [c for c in [*COLUMNS, "step_samples", "paired_samples"] if c not in df]
    # One join, not a column at a time: every column a record could have, None where it has none.
    return pd.concat([df, pd.DataFrame({c: [None] * len(df) for c in missing}, index=df.index)], axis=1)


def strategy_label(row) -> str:
    """'lora_all r=8', or 'full': a rank is None in an object column and NaN in a float one."""
    rank = row.get("rank")
    return str(row["strategy"]) + (f" r={int(rank)}" if pd.notna(rank) else "")


def variant_suffix(row) -> str:
    """' quant=nf4 checkpointing=blocks' for the variants a row has on; '' for a plain one."""
    return "".join(f" {k}={row.get(k)}" for k, plain in VARIANTS.items()
                   if pd.notna(row.get(k)) and row.get(k) != plain)


def variant_label(row, keys: list[str]) -> str:
    """'lora_all r=8' plus any other key that varies within the setting; a variant (QLoRA, DoRA,
    checkpointing) only where it is on: 'lora_all r=8 quant=nf4 checkpointing=blocks'."""
    parts = [strategy_label(row)]
    for k in keys:
        if k in VARIANTS:
            continue
        if k != "rank" and pd.notna(row.get(k)):
            parts.append(f"{k}={row[k]}")
    return " ".join(parts) + variant_suffix(row)  # a variant that is on is named, varying or not


def varying_keys(df: pd.DataFrame) -> list[str]:
    return [k for k in VARIANT_KEYS if k in df and df[k].dropna().astype(str).nunique() > 1]


def with_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Add time, FLOP and op ratios to the median stable `full` record of the same setting."""
    df = df.copy()
    ok = df[(df.status == "ok") & (df.unstable != True) & (df.kind != "projected")]  # noqa: E712
    base = ok[ok.baseline == True].groupby(SETTING, dropna=False)[
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
