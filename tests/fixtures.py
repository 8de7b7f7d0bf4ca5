"""Hand-made job records with known figures, for report and explanation tests."""
import json
from pathlib import Path

CALIBRATION = {"matmul_flops_per_s": 1e11, "op_overhead_s": 5e-6}


def _stats(median, p10=None, p90=None):
    return {"median": median, "mean": median, "p10": p10, "p90": p90, "std": 0.5 if p10 is not None else None}


def record(strategy="full", rank=None, step=20.0, spread=(19.0, 21.0), fwd=6.0, bwd=11.0, opt=3.0,
           flops=1e9, ops=1000, trainable=1000, status="ok", repeat=0, reason=None, same_as=None,
           stops_early=None, **extra) -> dict:
    """A schema-2 record, as bench/job.py writes it, with the figures given."""
    lora = {"rank": rank or 8, "alpha": None, "rslora": False, "dropout": 0.0, "init": "A", "include_head": False,
            "layers": None, "targets": None, "lr_ratio": 1.0, "backend": "native"}
    uses_lora = rank is not None
    early = strategy in ("lora_last", "head_only") if stops_early is None else stops_early
    rec = {
        "schema": 2, "status": status,
        "identity": {"config_key": f"{strategy}-{rank}-{repeat}", "strategy": strategy, "rank": rank,
                     "model": "tiny", "backend": "native" if uses_lora else None,
                     "include_head": False if strategy == "lora_all" else None, "repeat": repeat},
        "config": {"model": {"name": "tiny", "dim": 128, "n_layers": 2}, "data": {"name": "markov"},
                   "strategy": {"name": strategy}, "lora": lora, "repeat": repeat,
                   "train": {"batch_size": 8, "seq_len": 64, "grad_accum": 1, "precision": "fp32",
                             "lr": 1e-3, "phases": True, "target_loss": None}},
    }
    if status != "ok":
        rec["outcome"] = {"reason": reason, "same_as": same_as}
    if status in ("invalid", "duplicate"):  # refused or skipped before anything was measured
        rec.update(extra)
        return rec
    rec.update({
        "env": {"torch": "2.13.0", "python": "3.11", "device": "cpu", "device_name": "test cpu", "cuda": None,
                "cpu": "test cpu", "cpu_count": 2, "threads": 2, "hostname": "test", "git_commit": None,
                "machine": "test machine"},
        "plan": {"strategy": strategy, "uses_lora": uses_lora, "backward_stops_early": early,
                 "lora_scale": 1.0 if uses_lora else None, "adapted": [], "trained": []},
        "params": {"total": 100_000, "trainable": trainable},
        "time": {"wall_s": 1.0, "train_s": 0.4, "timed_s": 0.4, "timed_steps": 20,
                 "tokens_per_s": 512 / (step / 1e3), "step_ms": _stats(step, *spread),
                 "forward_ms": _stats(fwd), "backward_ms": _stats(bwd), "optimizer_ms": _stats(opt)},
        "memory": {"weights_bytes": 400_000, "grads_bytes": 4 * trainable, "optimizer_state_bytes": 8 * trainable,
                   "activations_bytes": 2_000_000, "device_peak_allocated_bytes": None,
                   "device_peak_reserved_bytes": None, "nvml_used_bytes": None, "host_peak_rss_bytes": 300_000_000},
        "work": {"flops_per_step": int(flops), "ops_per_step": ops, "tokens_per_step": 512, "counted_step": 1},
        "loss": {"first": 5.5, "last": 4.0, "eval_start": 5.5, "eval_end": 4.5, "floor": 1.0},
        "calibration": {**CALIBRATION, "matmul_shape": [512, 128, 384], "precision": "fp32"},
    })
    rec.update(extra)
    return rec


def repeats(n=3, jitter=0.01, **kw) -> list[dict]:
    """The same configuration measured n times (repeat 0..n-1), its step time moved by -jitter, 0,
    +jitter, ... (relative) from one repeat to the next: the noise between jobs the intervals need."""
    out = []
    for r in range(n):
        f = 1 + jitter * (r - (n - 1) / 2)
        step, (lo, hi) = kw.get("step", 20.0), kw.get("spread", (19.0, 21.0))
        out.append(record(**{**kw, "step": step * f, "spread": (lo * f, hi * f), "repeat": r}))
    return out


def paired(rec: dict, ratios: list[float], base_ms: float = 20.0) -> dict:
    """`rec` with a paired section; write() puts one steps.jsonl row of kind paired per ratio."""
    import statistics

    own = [r * base_ms for r in ratios]
    stat = lambda xs: {"median": statistics.median(xs), "mean": statistics.fmean(xs), "p10": min(xs),  # noqa: E731
                       "p90": max(xs), "std": statistics.pstdev(xs)}
    return {**rec, "paired": {"baseline": "full", "pairs": len(ratios), "ratio": statistics.median(ratios),
                              "own_ms": stat(own), "base_ms": stat([base_ms] * len(ratios)), "order": "ABBA",
                              "skipped": None}, "_pair_ratios": list(ratios), "_base_ms": base_ms}


def write(root: Path, name: str, rec) -> Path:
    """A job directory with the record and, for an ok record, 11 timed steps whose median is the
    record's median step and whose ends are its p10 and p90 (the bootstrap reads these), and
    its paired rows where it has a paired section."""
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    pairs = base_ms = None
    if isinstance(rec, dict):
        rec = dict(rec)
        pairs, base_ms = rec.pop("_pair_ratios", None), rec.pop("_base_ms", None)
    text = rec if isinstance(rec, str) else json.dumps(rec)
    (d / "metrics.json").write_text(text)
    if isinstance(rec, dict) and rec["status"] == "ok" and (rec.get("time") or {}).get("step_ms", {}).get("median"):
        st = rec["time"]["step_ms"]
        mid = st["median"]  # a spread that does not hold the median is widened to it: the log's median is the record's
        lo, hi = min(st["p10"] or mid, mid), max(st["p90"] or mid, mid)
        times = [lo + (mid - lo) * k / 5 for k in range(5)] + [mid] + [mid + (hi - mid) * k / 5 for k in range(1, 6)]
        rows, elapsed = [], 0.0
        for i, ms in enumerate(times):
            elapsed += ms / 1e3
            rows.append({"step": i + 2, "kind": "timed", "loss": 5.5 - 0.1 * i, "step_ms": ms, "elapsed_s": elapsed})
        rows += [{"step": k, "kind": "paired", "step_ms": r * base_ms, "base_ms": base_ms}
                 for k, r in enumerate(pairs or [])]
        (d / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


# LoRA slower than full: fewer FLOPs (-3 ms at 1e11 FLOP/s) but 2000 more ops (+10 ms at 5 us).
SLOW_BY_OPS = dict(strategy="lora_all", rank=8, step=30.0, spread=(29.0, 31.0), fwd=10.0, bwd=17.0, opt=2.9,
                   flops=0.7e9, ops=3000, trainable=100)
# LoRA faster than full: same ops, nearly the same FLOPs, optimizer 8 ms -> 1 ms.
FULL_BIG_OPT = dict(step=20.0, opt=8.0, bwd=6.0)
FAST_BY_OPTIMIZER = dict(strategy="lora_qk", rank=8, step=13.0, spread=(12.5, 13.5), fwd=6.0, bwd=6.0, opt=1.0,
                         flops=0.95e9, ops=1000, trainable=100)
