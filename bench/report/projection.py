"""The report of projected records (bench/project/): does it fit, and which is projected slower, and why.

Every heading, table and sentence here says PROJECTED: these figures come from a step run on fake
tensors and priced with datasheet figures, not from a device. They never enter a measured verdict
(bench/report/explain.py reads no projected record).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.report.load import strategy_label, variant_suffix

GIB = 2 ** 30
GROUP = ["model", "batch_size", "seq_len", "precision", "ranks", "parallel"]
KIND = {"allreduce": "all-reduce", "allgather": "all-gather", "reducescatter": "reduce-scatter"}


# Written by benchmarks/published_check.py: the projection's error against published GPU runs.
ERROR = Path(__file__).resolve().parents[2] / "results" / "reference" / "published" / "error.json"
_KINDS = {"step": "step time", "reserve": "allocator reserve", "memory": "peak memory",
          "ratio": "reported LoRA-to-baseline ratios"}


def stated_error(path: Path = ERROR) -> str:
    """The sentence every projected table carries: its error on published runs no constant was fitted to."""
    try:
        err = json.loads(path.read_text())
    except (OSError, ValueError):
        return "Its error against published GPU runs is not known here (results/reference/published/error.json is absent)."
    parts = [f"{_KINDS.get(k, k)} {100 * v['median_abs_error']:.0f}% over {v['rows']}" for k, v in err.items()]
    return ("Stated error, the median absolute error on published check runs (results/reference/published/check.md): "
            + "; ".join(parts) + ".")


def reserve_error(path: Path = ERROR) -> float | None:
    """The allocator reserve's stated error (median, on published check runs), or None where unknown."""
    try:
        return float(json.loads(path.read_text())["reserve"]["median_abs_error"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def at_the_edge(dg: pd.DataFrame, error: float | None) -> str | None:
    """The configurations whose fit verdict the reserve's stated error could turn: the device's
    capacity lies within error x reserve of the projected reserve."""
    if not error:
        return None
    edge = dg[(dg.reserved_bytes - dg.memory_bytes).abs() <= error * dg.reserved_bytes]
    if edge.empty:
        return None
    return (f"{dg.device.iloc[0]}: within the reserve's stated error ({error:.0%}) of the "
            f"{dg.memory_bytes.iloc[0] / GIB:.0f} GiB, so the verdict may turn: "
            + ", ".join(f"{r.configuration} ({r.reserved_bytes / GIB:.1f} GiB, {'fits' if r.fits else 'does not fit'})"
                        for _, r in edge.iterrows()))


def _parallel(p: dict, mixed: str = "") -> str:
    if p.get("ranks", 1) <= 1:
        return "one device"
    how = p["mode"].upper() + (f" ({'ZeRO-3' if p['shard'] == 'full' else 'ZeRO-2'}, shard={p['shard']}{mixed})"
                               if p.get("shard") else "")
    return f"{p['ranks']} ranks, {how}" + (f", {p['nodes']} nodes" if p.get("nodes", 1) > 1 else "")


def rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (projected record, device)."""
    out = []
    for _, r in df[(df.kind == "projected") & (df.status == "ok")].iterrows():
        p = r.projection
        for d in p["devices"]:
            out.append({"model": r.model, "batch_size": r.batch_size, "seq_len": r.seq_len, "precision": r.precision,
                        "dtype": p["dtype"], "configuration": strategy_label(r) + variant_suffix(r)
                        + (" +head" if r.include_head is True else "")
                        + (" adapter_dtype=fp32" if r.get("adapter_dtype") == "fp32" else ""),
                        "plain_full": bool(r.baseline), "peak": p["peak_bytes"], **{f"split_{k}": v for k, v in
                                                                                   p["split"].items()},
                        "ops": p["ops_per_step"], "flops": p["flops_per_step"], "seconds": p["seconds"],
                        "saved": p["activations_bytes"], "ranks": p.get("ranks", 1),
                        "parallel": _parallel(p, r.get("mixed") or ""),
                        "collectives": p.get("collectives") or {}, "train_tokens": p.get("train_tokens"),
                        "by_stage": p.get("collectives_by_stage") or {},
                        "mean_seq_len": p.get("mean_seq_len"), "autograd_nodes": p.get("autograd_nodes"),
                        "tokens": r.batch_size * (p.get("mean_seq_len") or r.seq_len), **d})
    return pd.DataFrame(out)


def _gb(c: dict, kind: str) -> float:
    return (c.get(kind) or {}).get("bytes", 0) / 1e9


def communication(r: pd.Series, full: pd.Series | None) -> str:
    """What the ranks exchange, and what LoRA changes of it: the data-parallel sentence."""
    c = r.collectives
    parts = []
    if "allgather" in c:
        where = ", ".join(f"{stage} {_gb(kinds, 'allgather'):.1f}" for stage, kinds in r.by_stage.items()
                          if "allgather" in kinds)
        parts.append(f"FSDP all-gathers {_gb(c, 'allgather'):.1f} GB of weights per step per rank"
                     + (f" ({where})" if where else "")
                     + (f", frozen or not (full fine-tuning: {_gb(full.collectives, 'allgather'):.1f} GB)"
                        if full is not None and not r.plain_full else ""))
    for kind in ("reducescatter", "allreduce"):
        if kind not in c and (full is None or kind not in full.collectives):
            continue
        if full is not None and not r.plain_full:
            parts.append(f"LoRA removes {_gb(full.collectives, kind) - _gb(c, kind):.1f} GB of full fine-tuning's "
                         f"{_gb(full.collectives, kind):.1f} GB {KIND[kind]} of gradients")
        else:
            parts.append(f"{KIND[kind]} {_gb(c, kind):.1f} GB of gradients")
    share = r.exposed_comm_ms / r.step_ms if r.step_ms else 0.0
    parts.append(f"the link ({r.link}) busy {r.comm_ms:.1f} ms, of which {r.exposed_comm_ms:.1f} ms exposed: "
                 f"{share:.0%} of the step")
    return "; ".join(parts)


def _known(r: pd.Series, key: str) -> bool:
    """A figure the record has (records projected before it was kept have None, NaN in a frame)."""
    v = r.get(key)
    return v is not None and v == v


def _why(r: pd.Series, full: pd.Series) -> str:
    ratio = r.step_ms / full.step_ms
    word = "slower" if ratio > 1 else "faster"
    if r.bound == "communication":
        cause = f"communication-bound: {communication(r, full)}"
    elif r.bound == "host":
        cause = (f"host-bound: the GPU idles {r.idle_fraction:.0%} of the step while the host issues "
                 f"{r.kernels:,} kernels ({r.ops:,} operations at {r.host_op_us:.1f} + {r.launch_us:.1f} us"
                 + (f", {int(r.autograd_nodes):,} autograd nodes at {r.host_node_us:.1f} us"
                    if _known(r, "autograd_nodes") and _known(r, "host_node_us") else "") + ")")
    else:
        cause = (f"device-bound: {r.compute_ms:.1f} ms of arithmetic and {r.memory_ms:.1f} ms of memory traffic, "
                 f"the GPU idle {r.idle_fraction:.0%}")
    return (f"{r.configuration} on {r.device}: projected {ratio:.2f}x full fine-tuning's step ({word}; "
            f"{r.step_ms:.1f} against {full.step_ms:.1f} ms), {cause}")


def _retried(r: pd.Series) -> str:
    return (f"{r.configuration} on {r.device}: fits only as the caching allocator, out of room, returns its cache "
            f"and retries, {int(r.alloc_retries)} time(s) a step (PyTorch's num_alloc_retries): each retry frees "
            "and re-allocates device memory and synchronises, so that step will be slower than projected")


def _fit(r: pd.Series) -> str:
    big = "" if r.largest_batch is None or r.largest_batch != r.largest_batch else f", largest batch {int(r.largest_batch)}"
    return (f"{r.configuration} on {r.device}: reserve {r.reserved_bytes / GIB:.1f} of {r.memory_bytes / GIB:.0f} GiB, "
            f"{'fits' if r.fits else 'does not fit'}{big}")


def _row(r: pd.Series, full: pd.Series | None, ranks: int) -> dict:
    """One configuration on one device: the table's row."""
    row = {"configuration": r.configuration, "device": r.device,
           "peak GiB": f"{r.peak / GIB:.2f}", "reserve GiB": f"{r.reserved_bytes / GIB:.2f}",
           "fits": "yes" if r.fits else "no",
           "largest batch": "" if r.largest_batch != r.largest_batch or r.largest_batch is None
           else f"{int(r.largest_batch)}",
           "step ms": f"{r.step_ms:.1f}", "vs full": "" if full is None else f"{r.step_ms / full.step_ms:.2f}x",
           "bound": r.bound, "GPU idle": f"{r.idle_fraction:.0%}",
           "compute ms": f"{r.compute_ms:.1f}", "memory ms": f"{r.memory_ms:.1f}", "kernels": f"{r.kernels:,}",
           "tokens/s": f"{r.tokens * ranks / (r.step_ms / 1e3):,.0f}"}
    if r.train_tokens == r.train_tokens and r.train_tokens:  # not NaN, not None
        row[f"hours to {r.train_tokens:.3g} tokens"] = f"{r.train_tokens / (r.tokens * ranks / (r.step_ms / 1e3)) / 3600:,.1f}"
    if ranks > 1:
        row.update({"link": r.link, "link busy ms": f"{r.comm_ms:.1f}", "exposed comm ms": f"{r.exposed_comm_ms:.1f}",
                    **{f"{KIND[k]} GB": f"{_gb(r.collectives, k):.2f}" for k in KIND if k in r.collectives}})
    return row


def blocks(df: pd.DataFrame, out: Path, plot=None) -> list[tuple]:
    t = rows(df)
    if t.empty:
        return []
    blocks: list[tuple] = [("h2", "PROJECTED, not measured: memory and time on named devices"),
                           ("p", "Each configuration's step ran on fake tensors (bench/project/fake.py): its peak memory "
                                 "by category is PyTorch's MemTracker's, its time a roofline per operation (FLOPs over "
                                 "the device's peak, bytes over its bandwidth) on a device timeline fed by a host that "
                                 "issues every operation at a fixed cost plus a kernel launch "
                                 "(bench/project/timeline.py); with several ranks, rank 0 under a fake process group, "
                                 "its collectives priced on the named link (bench/project/links.py). reserve: the caching allocator's "
                                 "reserve, the step's allocations replayed through its rules (bench/project/allocator.py), "
                                 "+ 0.5 GiB of CUDA context (assumed). Nothing here was measured "
                                 "on the device; docs/projection.md says how far it is trusted."),
                           ("p", stated_error())]
    for n, (key, g) in enumerate(t.groupby(GROUP, sort=False, dropna=False)):
        model, batch, seq, precision, ranks, parallel = key
        per = " per rank" if ranks > 1 else ""
        means = sorted({int(m) for m in g.mean_seq_len if m == m and m is not None})
        seq = f"{seq} (the longest; timed at a mean of {', '.join(map(str, means))})" if means else seq
        blocks.append(("h3", f"Projected: {model}, batch {batch} x seq {seq}{per}, {precision} autocast, "
                             f"{g.dtype.iloc[0]} parameters, {parallel}"))
        table = []
        lines = []
        for device, dg in g.groupby("device", sort=False):
            fulls = dg[dg.plain_full]
            full = fulls.iloc[0] if not fulls.empty else None
            for _, r in dg.iterrows():
                table.append(_row(r, full, ranks))
            fit = dg[dg.fits]
            lines.append(f"{device} ({dg.memory_bytes.iloc[0] / GIB:.0f} GiB): fits at batch {batch}: "
                         + (", ".join(fit.configuration) if not fit.empty else "none") + "; "
                         + "; ".join(_fit(r) for _, r in dg.iterrows() if not r.fits))
            edge = at_the_edge(dg, reserve_error())
            lines += ([edge] if edge else []) + [_retried(r) for _, r in dg.iterrows()
                                                 if r.fits and r.get("alloc_retries", 0) > 0]
            if full is not None:
                lines += [_why(r, full) for _, r in dg.iterrows() if not r.plain_full and r.step_ms > full.step_ms]
            if ranks > 1:
                lines += [f"{r.configuration} on {device}, {parallel}: {communication(r, full)}"
                          for _, r in dg.iterrows()]
        split = g.drop_duplicates("configuration")
        blocks += [("table", pd.DataFrame(table)),
                   ("table", pd.DataFrame({"configuration": split.configuration,
                                           **{c.replace("split_", "") + " GiB": [f"{x / GIB:.2f}" for x in split[c]]
                                              for c in split.columns if c.startswith("split_")},
                                           "saved for backward GiB": [f"{x / GIB:.2f}" for x in split.saved],
                                           "TFLOP/step": [f"{x / 1e12:.2f}" for x in split.flops],
                                           "operations": [f"{x:,}" for x in split.ops],
                                           "projected in s": [f"{x:.0f}" for x in split.seconds]})),
                   ("ul", lines)]
        if plot is not None:
            name = f"projection_{n + 1}"
            try:
                plot(g, out, name)
                blocks.append(("img", name, "PROJECTED memory by category against each device's capacity, and the "
                                            "projected time split"))
            except Exception as e:  # one plot must not cost the report
                blocks.append(("p", f"The projection plot failed: {type(e).__name__}: {e}"))
    return blocks
