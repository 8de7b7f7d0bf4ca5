"""search.batch: the largest batch that fits train.memory_budget_gb, by a bounded search.

LoRA saves gradient and optimizer-state memory; at equal memory it can run a larger batch, which
may move it to where it is faster. This finds that batch for one configuration:

    double from train.batch_size while the probe fits, up to search.max_batch;
    after the first probe that does not fit, bisect between the largest fit and the smallest miss;
    stop at search.max_probes probes.

Each probe is a whole job (the same configuration at one batch size) in its own process, so a
probe that ran out of memory leaves neither its allocations nor its peak RSS to the next. Its
record is kept in <job>/probes/b<batch>/, the oom ones included. The searching job's record is
the record of the largest probe that fitted, with a `search` section listing every probe.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

from bench.config import BenchConfig
from bench.record.schema import Probe, Record, Search
from bench.record.store import METRICS, PROBES, read_record

def next_batch(fits: dict[int, bool], start: int, max_batch: int) -> int | None:
    """The next batch size to probe, given the probes so far ({batch: fitted}); None when done."""
    if not fits:
        return start
    ok = [b for b, f in fits.items() if f]
    miss = [b for b, f in fits.items() if not f]
    lo = max(ok, default=0)
    hi = min(miss, default=None)
    if hi is None:  # everything so far fitted: double, up to the cap
        return min(2 * lo, max_batch) if lo < max_batch else None
    if lo == 0:  # the start did not fit: halve down towards 1
        return hi // 2 if hi > 1 else None
    return (lo + hi) // 2 if hi - lo > 1 else None


def _probe(node: dict, batch: int, out_dir: Path) -> Record:
    """Run the configuration at `batch` as a job in a fresh process; its record."""
    probe = copy.deepcopy(node)
    probe["train"]["batch_size"] = batch
    probe["search"]["batch"] = False
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(probe))
    proc = subprocess.run([sys.executable, "-m", "bench.job", str(out_dir)], capture_output=True, text=True)
    if not (out_dir / METRICS).exists():  # the process died before the job could record anything
        raise RuntimeError(f"the probe at batch {batch} left no record (exit {proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1:] or ''}")
    return read_record(out_dir / METRICS)


def _peak(rec: Record) -> int | None:
    m = rec.memory
    if m is None:
        return None
    return m.device_peak_allocated_bytes if m.device_peak_allocated_bytes is not None else m.host_peak_rss_bytes


def search_batch(cfg: BenchConfig, node: dict, out_dir: Path, rec: Record) -> str:
    """Probe, fill `rec` from the best probe; returns the job's status (ok, or the failing probe's)."""
    s, fits, probes, best = cfg.search, {}, [], None
    rec.search = Search(budget_gb=cfg.train.memory_budget_gb, best_batch=None, stopped_by="max_probes")
    while len(probes) < s.max_probes:
        batch = next_batch(fits, cfg.train.batch_size, s.max_batch)
        if batch is None:
            break
        path = out_dir / PROBES / f"b{batch}"
        probe = _probe(node, batch, path)
        # The host cap is sampled (bench/measure/memory.py), so a short spike can pass it unseen:
        # a probe fits only if its recorded peak is within the budget too.
        peak = _peak(probe)
        fits[batch] = probe.status == "ok" and peak is not None and peak <= cfg.train.memory_budget_gb * 2**30
        probes.append(Probe(batch_size=batch, status=probe.status, path=str(path.relative_to(out_dir)), fits=fits[batch],
                            peak_bytes=peak, tokens_per_s=probe.time and probe.time.tokens_per_s,
                            step_ms=probe.time and probe.time.step_ms.median))
        rec.search.probes = probes
        if probe.status not in ("ok", "oom"):  # not a question of memory: the search cannot go on
            rec.outcome = probe.outcome
            return probe.status
        if fits[batch] and (best is None or batch > best[0]):
            best = (batch, probe)
    else:
        batch = next_batch(fits, cfg.train.batch_size, s.max_batch)
    if batch is None:
        rec.search.stopped_by = "fitted max_batch" if best and best[0] >= s.max_batch else "bracketed"
    if best is None:
        return "oom"
    rec.search.best_batch = best[0]
    rec.take_measurements(best[1])
    rec.config["train"]["batch_size"] = best[0]  # the record's sections were measured at this batch
    return "ok"
