"""`python -m bench.run [-m] key=value ...`: one job, or a sweep of jobs, each measured and recorded.

`run_job` is the plain function (tests call it with a composed config); `main` is Hydra's thin
wrapper around it; `cli` checks the command line first, so a typo costs one line, not a trace.
Every job writes metrics.json whatever happens: a refused configuration, a divergence or a
crash is a record with a status, and a sweep goes on to its next job.
"""
from __future__ import annotations

import gc
import hashlib
import json
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bench.config import ConfigError, load_config
from bench.env import describe
from bench.preflight import preflight
from bench.records import METRICS, SCHEMA, read_metrics, write_json_atomic
from bench.strategies import STRATEGIES
from bench.train import Diverged, OutOfMemory, resolve_device, run_training

# (status, multirun?) of each job this process ran; Hydra's multirun returns nothing to the caller.
FINISHED: list[tuple[str, bool]] = []
SWEEP_DIRS: list[Path] = []  # where this process's sweep writes, for a report after an interrupt
FINDINGS = {"ok", "oom", "diverged", "invalid", "duplicate"}  # outcomes that are results, not failures


def _identity(node: dict) -> dict:
    """Grouping fields, read leniently from the raw config so even an invalid job has them."""
    def get(*path):
        cur: Any = node
        for p in path:
            cur = cur.get(p) if isinstance(cur, dict) else None
        return cur
    strategy = get("strategy", "name")
    uses_lora = strategy in STRATEGIES and STRATEGIES[strategy].uses_lora
    return {"strategy": strategy, "rank": get("lora", "rank") if uses_lora else None,
            "model": get("model", "name")}


# Keys that do not change what is measured, left out of the configuration key.
_NOT_MEASURED = {("resume",), ("train", "progress")}


def config_key(node: dict) -> str:
    """A stable hash of what a job measures: the resolved configuration (no output paths in it),
    less the keys its strategy ignores, so `full` swept over lora.rank is one configuration."""
    ignored = set(_NOT_MEASURED)
    strategy = STRATEGIES.get((node.get("strategy") or {}).get("name"))
    if strategy is not None and not strategy.uses_lora:
        ignored.add(("lora",))
    elif strategy is not None and strategy.name != "lora_all":
        ignored.add(("lora", "include_head"))

    def strip(d: dict, path=()) -> dict:
        return {k: strip(v, path + (k,)) if isinstance(v, dict) else v
                for k, v in d.items() if path + (k,) not in ignored}
    return hashlib.sha256(json.dumps(strip(node), sort_keys=True).encode()).hexdigest()[:16]


def _to_node(cfg: DictConfig | dict) -> dict:
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    node.pop("hydra", None)
    return node


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_job(cfg: DictConfig | dict, out_dir: Path) -> dict:
    """Run one job from a composed config and write out_dir/metrics.json; returns the record.

    Every outcome is a record: invalid, diverged, oom and error are caught here, so a sweep
    goes on; an interrupt (Ctrl-C, SIGTERM) is recorded and then passed on, so it stops.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    node = _to_node(cfg)
    record: dict[str, Any] = {"schema": SCHEMA, "status": "error", **_identity(node),
                              "config_key": config_key(node), "config": node,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # A cluster pre-empts a job with SIGTERM: treat it as Ctrl-C, so the record is written.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm) if main_thread else None
    try:
        bench_cfg = load_config(node)
        record["env"] = describe(resolve_device(bench_cfg))
        run_training(bench_cfg, out_dir, record)
        record["status"] = "ok"
    except ConfigError as e:
        record.update(status="invalid", reason=str(e), key=e.key)
    except Diverged as e:
        record.update(status="diverged", reason=str(e), failed_step=e.step, last_finite_loss=e.last_finite)
    except OutOfMemory as e:
        record.update(status="oom", reason=str(e), failed_step=e.step, oom_where=e.where)
    except torch.cuda.OutOfMemoryError as e:  # before the first step: moving the model, the first eval
        record.update(status="oom", reason=f"out of cuda memory before training: {str(e).splitlines()[0]}",
                      failed_step=None, oom_where="cuda")
    except KeyboardInterrupt:
        record.update(status="interrupted", reason="interrupted by the user or a signal")
        write_json_atomic(out_dir / METRICS, record)
        raise
    except Exception as e:  # recorded, so the sweep's other jobs still run
        record.update(status="error", reason=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exception(e)[-6:])
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    write_json_atomic(out_dir / METRICS, record)
    _free_memory()
    return record


def _free_memory() -> None:
    """After a failed job, the traceback's frames still hold its tensors: let them go."""
    sys.last_traceback = sys.last_value = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _is_complete(path: Path, key: str) -> bool:
    try:
        rec = read_metrics(path)
    except ValueError:
        return False
    return rec.get("status") == "ok" and rec.get("config_key") == key


def find_complete(sweep_dir: Path, key: str) -> Path | None:
    """A metrics.json under sweep_dir with status ok for configuration `key`, if any."""
    return next((p for p in sorted(Path(sweep_dir).rglob(METRICS)) if _is_complete(p, key)), None)


def summary_line(rec: dict) -> str:
    """The one line a job prints when it ends."""
    head = f"[{rec['status']}] {rec.get('strategy')}" + (f" r={rec['rank']}" if rec.get("rank") else "") \
        + f" on {rec.get('model')}"
    if rec["status"] != "ok":
        return f"{head}: {rec.get('reason', '')}"
    t, m, p, loss = rec["time"], rec["memory"], rec["params"], rec["loss"]
    peak = m["device_peak_allocated_bytes"]
    mem = f"peak {peak / 2**20:.0f} MiB allocated" if peak is not None else \
        f"peak RSS {m['host_peak_rss_bytes'] / 2**20:.0f} MiB"
    return (f"{head}: step {t['step_ms']['median']:.2f} ms (median), {mem}, "
            f"trainable {p['trainable']:,} ({100 * p['trainable'] / p['total']:.2f}%), "
            f"loss {loss['first']:.3f} -> {loss['last']:.3f} (eval {loss['eval_end']:.3f})")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    if multirun:
        SWEEP_DIRS.append(Path(hc.sweep.dir))
    if multirun and cfg.resume is True:
        node = _to_node(cfg)
        key = config_key(node)
        own = out_dir / METRICS
        done = own if _is_complete(own, key) else find_complete(Path(hc.sweep.dir), key)
        if done is not None:
            if done != own:  # the same measurement under another job: say so in this job's place
                write_json_atomic(own, {"schema": SCHEMA, "status": "duplicate", **_identity(node),
                                        "config_key": key, "same_as": str(done.parent), "config": node})
            print(f"[skip] {' '.join(hc.overrides.task)}: already measured in {done.parent}", flush=True)
            FINISHED.append(("ok", True))
            return
    old = out_dir / METRICS
    if old.exists():  # another configuration's record in this job's directory: keep it, aside
        old.rename(out_dir / f"metrics.replaced-{time.strftime('%Y%m%d-%H%M%S')}.json")
    rec = run_job(cfg, out_dir)
    print(summary_line(rec), file=sys.stdout if rec["status"] == "ok" else sys.stderr, flush=True)
    FINISHED.append((rec["status"], multirun))


def exit_code(finished: list[tuple[str, bool]]) -> int:
    """A single run: 0 only if ok (2 if refused). A sweep: 0 if every job ended in a finding."""
    if not finished:
        return 1
    statuses = [s for s, _ in finished]
    if "interrupted" in statuses:
        return 130
    if any(s not in FINDINGS for s in statuses):
        return 1
    if not finished[0][1] and statuses[0] != "ok":
        return 2 if statuses[0] == "invalid" else 0
    return 0


def expand_repeats(argv: list[str]) -> list[str]:
    """`repeats=N` -> `repeat=0,...,N-1` as the first override: the outermost loop of the sweep,
    so every repetition is a full pass over the grid and drift hits all configurations alike."""
    found = [a for a in argv if a.startswith("repeats=")]
    if not found:
        return argv
    value = found[-1].split("=", 1)[1]
    if not value.isdigit() or int(value) < 1:
        print(f"error: repeats={value!r} must be a whole number >= 1", file=sys.stderr)
        sys.exit(2)
    rest = [a for a in argv if not a.startswith("repeats=")]
    # Before the first key=value override (flags and their values, like `--cfg job`, stay put).
    at = next((i for i, a in enumerate(rest) if "=" in a and not a.startswith("-")), len(rest))
    rest.insert(at, f"repeat={','.join(map(str, range(int(value))))}")
    if int(value) > 1 and not any(a in ("-m", "--multirun") for a in rest):
        rest.insert(0, "-m")
    return rest


def cli() -> None:
    sys.argv[1:] = expand_repeats(sys.argv[1:])
    preflight(sys.argv[1:])
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: the record of the running job was written; the sweep stopped", file=sys.stderr)
        if SWEEP_DIRS:  # Hydra skips on_multirun_end after an interrupt: report what was measured
            from bench.callbacks import report_sweep

            report_sweep(SWEEP_DIRS[-1])
        sys.exit(130)
    sys.exit(exit_code(FINISHED))


if __name__ == "__main__":
    cli()
