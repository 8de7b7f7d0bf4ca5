"""A multi-process job (dist.nproc > 1): start the ranks through torchrun, merge their records.

The Hydra job stays the orchestrator. It writes the resolved config, runs
`python -m torch.distributed.run --standalone --nproc-per-node N -m bench.distributed.worker DIR` in a
process group of its own, and waits. Ctrl-C or SIGTERM stops the whole group (torchrun and every
rank), so no worker outlives the job. Then one record from N:

    step time   per timed step, the slowest rank's (a data-parallel step ends when the last rank
                does); the merged steps.jsonl is what the report's intervals resample
    memory      rank 0's sections, and every rank's peak in dist.ranks
    comm        rank 0's counts (every rank hands the collectives the same payload)
    status      ok only if every rank is ok; otherwise the first failing rank's, named
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import signals
from bench.config import BenchConfig
from bench.measure.figures import stats
from bench.measure.stability import judge
from bench.record.schema import Dist, Outcome, RankFigures, Record
from bench.record.store import METRICS, RANKS, STEPS, StepLog, read_record, read_steps



def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to torchrun and every rank (one process group), SIGKILL to what is left."""
    signals.stop_group(proc, ((signal.SIGTERM, 20), (signal.SIGKILL, 10)))


def _launch(cfg: BenchConfig, root: Path) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.dist.nproc}",
           "-m", "bench.distributed.worker", str(root)]
    with (root / "torchrun.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1)
                                                                               // cfg.dist.nproc))})
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                signals.check()
        except BaseException:
            _stop(proc)
            raise
    return proc.returncode


def _slowest_steps(root: Path, world: int, out_dir: Path) -> list[float]:
    """The job's steps.jsonl: each step's row from rank 0, its step_ms the slowest rank's."""
    ranks = [read_steps(root / f"rank{r}" / STEPS) for r in range(world)]
    merged = []
    with StepLog(out_dir / STEPS) as log:
        for rows in zip(*ranks):
            row = dict(rows[0])
            if row.get("step_ms") is not None:
                row["step_ms"] = max(r["step_ms"] for r in rows)
                row["rank_step_ms"] = [r["step_ms"] for r in rows]
            log.write(row)
            merged.append(row)
    return [r["step_ms"] for r in merged if r["kind"] == "timed"]


def run_distributed(cfg: BenchConfig, node: dict, out_dir: Path, rec: Record) -> str:
    """Run the job on cfg.dist.nproc ranks and fill `rec`; returns its status."""
    root = out_dir / RANKS
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(node))
    t0 = time.perf_counter()
    code = _launch(cfg, root)
    n = cfg.dist.nproc
    recs = [read_record(root / f"rank{r}" / METRICS) if (root / f"rank{r}" / METRICS).exists() else None
            for r in range(n)]
    failed = [(r, x) for r, x in enumerate(recs) if x is None or x.status != "ok"]
    if failed:
        r, x = next(((r, x) for r, x in failed if x is not None and x.status != "interrupted"), failed[0])
        if x is None:
            rec.outcome = Outcome(reason=f"rank {r} left no record (torchrun exit {code}; see {root / 'torchrun.log'})")
            return "error"
        rec.outcome = x.outcome
        rec.outcome.reason = f"rank {r}: {x.outcome.reason if x.outcome else x.status}"
        return x.status
    rec.take_measurements(recs[0])
    timed = _slowest_steps(root, n, out_dir)
    rec.time.step_ms, rec.time.timed_s = stats(timed), sum(timed) / 1e3
    rec.work.tokens_per_step *= n  # every rank trains on its own batch
    rec.time.tokens_per_s = rec.work.tokens_per_step / (rec.time.step_ms.median / 1e3)
    rec.time.wall_s = time.perf_counter() - t0
    # Ranks on one machine wait for each other's threads whenever cores are scarce, so a rank's
    # run-queue wait measures its sibling as much as a neighbour: the job is judged on the drift
    # of its slowest-rank steps; every rank's wait is kept in dist.ranks.
    rec.stability = judge([{"step_ms": ms} for ms in timed], recs[0].stability and {
        "gpu_other_processes": recs[0].stability.gpu_other_processes,
        "gpu_utilization": recs[0].stability.gpu_utilization})
    rec.dist = Dist(world_size=n, mode=cfg.dist.mode, backend=recs[0].env.device == "cuda" and "nccl" or "gloo",
                    ranks=[RankFigures(rank=r, step_ms=x.time.step_ms.median,
                                       device_peak_allocated_bytes=x.memory.device_peak_allocated_bytes,
                                       host_peak_rss_bytes=x.memory.host_peak_rss_bytes,
                                       wait_fraction=x.stability and x.stability.wait_fraction)
                           for r, x in enumerate(recs)])
    return "ok"
