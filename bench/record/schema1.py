"""Schema 1 records (before the sections were typed), rewritten as schema 2 with the same figures.

The references filed before schema 2 are read through this on every report (bench/record/schema.py).
"""
from __future__ import annotations

SCHEMA = 2  # what these records become (bench/record/schema.py imports this module, not the reverse)

# Facts about the strategies as they stood when schema-1 records were written: lora_all was the
# only strategy that read lora.include_head, and lora_last and head_only stopped backward early
# (as does any LoRA restricted by lora.layers). New records carry these facts in their plan.
_V1_EARLY_STOP = {"lora_last", "head_only"}
_V1_OUTCOME = ("reason", "key", "failed_step", "last_finite_loss", "oom_where", "traceback", "same_as")


def upgrade_1(old: dict) -> dict:
    """A schema-1 record rewritten as schema 2, with the same figures."""
    cfg = old.get("config") or {}
    lora = cfg.get("lora") or {}
    strategy, rank = old.get("strategy"), old.get("rank")
    new = {"schema": SCHEMA, "status": old.get("status"), "config": cfg,
           "identity": {"config_key": old.get("config_key") or "", "strategy": strategy, "rank": rank,
                        "model": old.get("model"), "backend": lora.get("backend", "native") if rank else None,
                        "include_head": lora.get("include_head") if strategy == "lora_all" else None,
                        "repeat": cfg.get("repeat"), "started": old.get("started")}}
    outcome = {k: old[k] for k in _V1_OUTCOME if k in old}
    if outcome:
        new["outcome"] = outcome
    for section in ("env", "model_shape", "params", "memory", "loss", "calibration", "eval_curve"):
        if section in old:
            new[section] = old[section]
    if "plan" in old:
        p = old["plan"]
        new["plan"] = {**p, "strategy": strategy, "uses_lora": bool(p.get("adapted")),
                       "backward_stops_early": strategy in _V1_EARLY_STOP or bool(rank and lora.get("layers"))}
    if "work" in old:
        new["work"] = {**old["work"], "counted_step": 0}  # schema 1 counted on the first step
    if "time" in old:
        t = dict(old["time"])
        t["timed_s"] = t.get("train_s")  # schema 1's train_s was the timed steps' time only
        new["time"] = t
    return new
