"""One job, from a composed config to its record on disk: config -> build -> measure -> record.

    pretrain stage (only when model.checkpoint=auto has no base yet; its own record and clock)
    load_config -> setup (bench/models) -> measure (bench/measure/protocol.py) -> metrics.json

Every outcome is a record: invalid, diverged, oom and error are caught here, so a sweep goes
on; an interrupt (Ctrl-C, SIGTERM) is recorded and then passed on, so the sweep stops.
"""
from __future__ import annotations

import gc
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench.models.setup import resolve_device, seed_everything, setup
from bench.models.strategies import STRATEGIES
from bench.config import load_config
from bench.failure import failure
from bench.measure.env import describe
from bench.measure.protocol import measure
from bench.pretrain import ensure_base
from bench.record.schema import Env, Identity, Outcome, Record
from bench.record.store import METRICS, write_record

# Keys that do not change what is measured, left out of the configuration key.
_NOT_MEASURED = {("resume",), ("remeasure",), ("train", "progress")}


def to_node(cfg: DictConfig | dict) -> dict:
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    node.pop("hydra", None)
    return node


def _get(node: dict, *path) -> Any:
    cur: Any = node
    for p in path:
        cur = cur.get(p) if isinstance(cur, dict) else None
    return cur


def _typed(value: Any, tp: type) -> Any:
    """`value` if it has the type the record expects, else None: the config keeps the raw value."""
    return value if isinstance(value, tp) and not (tp is int and isinstance(value, bool)) else None


def identity(node: dict, overrides: list[str] | None = None) -> Identity:
    """Grouping fields, read leniently from the raw config so that even an invalid job has them
    (a value of the wrong type is None here; the job's `invalid` reason names it); keys the
    strategy does not read are None (the strategy table says which)."""
    name = _typed(_get(node, "strategy", "name"), str)
    strategy = STRATEGIES.get(name)
    uses_lora = strategy is not None and strategy.uses_lora
    head = strategy is not None and strategy.reads(("lora", "include_head"))
    return Identity(config_key=config_key(node), strategy=name,
                    rank=_typed(_get(node, "lora", "rank"), int) if uses_lora else None,
                    model=_typed(_get(node, "model", "name"), str),
                    backend=_typed(_get(node, "lora", "backend"), str) if uses_lora else None,
                    include_head=_typed(_get(node, "lora", "include_head"), bool) if head else None,
                    repeat=_typed(_get(node, "repeat"), int), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    overrides=overrides)


# Variant keys at their plain values (bench/report/load.py VARIANTS) are left out of the key too:
# a plain job keeps the key it had before the keys existed, so older records and resumes still match.
_PLAIN = {("quant",): lambda n: _get(n, "quant", "base") in (None, "none"),
          ("lora", "dora"): lambda n: _get(n, "lora", "dora") in (None, False),
          ("lora", "adapter_dtype"): lambda n: _get(n, "lora", "adapter_dtype") in (None, "base"),
          ("train", "checkpointing"): lambda n: _get(n, "train", "checkpointing") in (None, "none"),
          ("train", "adamw_impl"): lambda n: _get(n, "train", "adamw_impl") in (None, "default"),
          ("project", "host_node_us"): lambda n: _get(n, "project", "host_node_us") is None,
          ("dist", "mixed_precision"): lambda n: _get(n, "dist", "mixed_precision") in (None, "none")}


def config_key(node: dict) -> str:
    """A stable hash of what a job measures: the resolved configuration (no output paths in it),
    less the keys its strategy ignores, so `full` swept over lora.rank is one configuration."""
    ignored = set(_NOT_MEASURED) | {k for k, plain in _PLAIN.items() if plain(node)}
    if _get(node, "project", "gpu") is not None:  # a projection is deterministic: its repeats are one job
        ignored.add(("repeat",))
    name = _get(node, "strategy", "name")
    strategy = STRATEGIES.get(name) if isinstance(name, str) else None
    if strategy is not None:
        ignored |= strategy.ignored_keys()

    def strip(d: dict, path=()) -> dict:
        return {k: strip(v, path + (k,)) if isinstance(v, dict) else v
                for k, v in d.items() if path + (k,) not in ignored}
    return hashlib.sha256(json.dumps(strip(node), sort_keys=True).encode()).hexdigest()[:16]


def _stages(node: dict, out_dir: Path, rec: Record) -> str:
    """The stages of a job; its status. The job's clock starts after any pretraining."""
    cfg = load_config(node)
    if cfg.project.gpu is not None:  # no device is touched: the step runs on fake tensors
        from bench.project.job import project_job, projectable

        projectable(cfg)
        return project_job(cfg, rec)
    device = resolve_device(cfg)
    rec.pretrain = ensure_base(cfg)  # before any probe of a search, so that none pretrains
    if cfg.search.batch:
        from bench.search import search_batch

        return search_batch(cfg, node, out_dir, rec)
    if cfg.dist.nproc > 1:
        from bench.distributed.launch import run_distributed

        return run_distributed(cfg, node, out_dir, rec)
    t0 = time.perf_counter()
    try:
        rec.env = Env(**describe(device))
        seed_everything(cfg.train.seed)
        measure(cfg, setup(cfg, device), out_dir, rec)
    finally:
        if rec.time is not None:
            rec.time.wall_s = time.perf_counter() - t0
    return "ok"


def run_job(cfg: DictConfig | dict, out_dir: Path, overrides: list[str] | None = None) -> Record:
    """Run one job from a composed config and write out_dir/metrics.json; returns the record.
    (Ctrl-C and SIGTERM reach it as a KeyboardInterrupt at a safe point: bench/signals.py.)"""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _settle_heap()
    node = to_node(cfg)
    rec = Record(status="error", identity=identity(node, overrides), config=node)
    # First, a record that stands if this process never writes another (SIGKILL, a node lost,
    # submitit's controller killing its tasks a second after Ctrl-C): the job has a record whatever ends it.
    write_record(out_dir / METRICS, Record(status="interrupted", identity=rec.identity, config=node, outcome=Outcome(
        reason="the job's process ended before the job did (killed, or its machine stopped); nothing it measured was kept")))
    try:
        rec.status = _stages(node, out_dir, rec)
        if rec.status == "oom" and rec.outcome is None:  # a search in which no batch fitted
            rec.outcome = Outcome(reason=f"no batch size fitted the memory budget (train.memory_budget_gb="
                                         f"{rec.search.budget_gb}); the probes are in {out_dir / 'probes'}")
    except KeyboardInterrupt as e:
        rec.status, rec.outcome = failure(e)
        write_record(out_dir / METRICS, rec)
        raise
    except Exception as e:  # recorded, so the sweep's other jobs still run
        rec.status, rec.outcome = failure(e)
    write_record(out_dir / METRICS, rec)
    _free_memory()
    return rec


def _settle_heap() -> None:
    """Collect what earlier jobs left, then freeze what survives (torch, Hydra, pandas: a large heap),
    so that the collections inside this job (before its peak counters reset, at its end) walk only
    this job's objects: 0.2 s each otherwise, half of a small job's wall time on this project's CPU.
    Frozen objects are still freed by reference counting; only the cycle search skips them."""
    gc.collect()
    gc.freeze()


def _free_memory() -> None:
    """After a failed job, the traceback's frames still hold its tensors: let them go."""
    sys.last_traceback = sys.last_value = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ranks_line(head: str, pr) -> str:
    """A data-parallel projection: one rank's memory split, then per device the step's three parts."""
    gib = 2**30
    how = f"{pr.mode}" + (f", {'ZeRO-3' if pr.shard == 'full' else 'ZeRO-2'} ({pr.shard})" if pr.shard else "")
    split = ", ".join(f"{k} {v / gib:.2f}" for k, v in pr.split.items() if v)
    sent = ", ".join(f"{k} {v['bytes'] / 1e9:.2f} GB in {v['calls']}" for k, v in sorted(pr.collectives.items()))
    lines = [f"{head}: PROJECTED, not measured: rank 0 of {pr.ranks} ({how}); per rank: peak {pr.peak_bytes / gib:.2f} "
             f"GiB ({split}); collectives per step: {sent or 'none'} ({pr.seconds:.0f} s to project)"]
    for d in pr.devices:
        lines.append(f"    {d.device}, {d.link}: step {d.step_ms:.1f} ms = compute {d.busy_ms:.1f} + host "
                     f"{d.host_wait_ms:.1f} + exposed communication {d.exposed_comm_ms:.1f} "
                     f"({d.exposed_comm_ms / d.step_ms:.0%}); link busy {d.comm_ms:.1f} ms; {d.bound}-bound; reserve "
                     f"{d.reserved_bytes / gib:.1f} of {d.memory_bytes / gib:.0f} GiB{'' if d.fits else ' (does not fit)'}")
    return "\n".join(lines)


def summary_line(rec: Record) -> str:
    """The one line a job prints when it ends."""
    i = rec.identity
    head = f"[{rec.status}] {i.strategy}" + (f" r={i.rank}" if i.rank else "") + f" on {i.model}"
    if rec.status != "ok":
        return f"{head}: {rec.outcome.reason if rec.outcome else ''}"
    if rec.kind == "projected":
        pr = rec.projection
        each = "; ".join(f"{d.device} {d.step_ms:.1f} ms ({d.bound}-bound), reserve {d.reserved_bytes / 2**30:.1f} of "
                         f"{d.memory_bytes / 2**30:.0f} GiB{'' if d.fits else ' (does not fit)'}" for d in pr.devices)
        if pr.ranks > 1:
            return _ranks_line(head, pr)
        return (f"{head}: PROJECTED, not measured: peak {pr.peak_bytes / 2**30:.2f} GiB, "
                f"{pr.flops_per_step / 1e12:.2f} TFLOP per step; {each} ({pr.seconds:.0f} s to project)")
    t, m, p, loss = rec.time, rec.memory, rec.params, rec.loss
    peak = m.device_peak_allocated_bytes
    mem = f"peak {peak / 2**20:.0f} MiB allocated" if peak is not None else \
        f"peak RSS {m.host_peak_rss_bytes / 2**20:.0f} MiB"
    busy = rec.stability is not None and rec.stability.unstable
    return (f"{head}: step {t.step_ms.median:.2f} ms (median), {mem}, "
            f"trainable {p.trainable:,} ({100 * p.trainable / p.total:.2f}%), "
            f"loss {loss.first:.3f} -> {loss.last:.3f} (eval {loss.eval_end:.3f})"
            + ("; measured on a busy machine: the report leaves it out of every verdict" if busy else ""))


def main(argv: list[str]) -> int:
    """One job from a resolved configuration: python -m bench.job <dir holding config.json>. The
    memory-budget search runs each probe this way, in a fresh process (bench/search.py)."""
    from bench import signals

    out_dir = Path(argv[0])
    signals.install()
    try:
        rec = run_job(json.loads((out_dir / "config.json").read_text()), out_dir)
    finally:
        signals.uninstall()
    return 0 if rec.status in ("ok", "oom") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
