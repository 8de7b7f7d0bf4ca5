"""One rank of a multi-process job: python -m torch.distributed.run ... -m bench.distributed.worker DIR.

Started by bench/distributed/launch.py, never by hand. Every rank builds the same model from the same
seed, draws its own batches (its rank offsets the data seed), wraps the model (bench/distributed/wrap.py)
and runs the usual measurement protocol into DIR/rank<r>/, counting the collectives of its timed
steps. A failure is that rank's record; SIGTERM (the job stopping) is an interrupted record.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from bench import signals
from bench.models.setup import seed_everything, setup
from bench.config import load_config
from bench.distributed.comm import KINDS, CommCounter
from bench.distributed.wrap import wrap
from bench.measure.env import describe
from bench.failure import failure
from bench.measure.protocol import measure
from bench.record.schema import Comm, Env, Identity, Record
from bench.record.store import METRICS, write_record


class TimedSteps:
    """The protocol's per-step callback: collectives are counted over the timed steps only."""

    def __init__(self, counter: CommCounter, timed: int):
        self.counter, self.steps, self.timed = counter, 0, timed

    def __call__(self, i: int, kind: str) -> None:
        if self.steps == self.timed:
            return
        if kind == "timed":
            self.steps += 1
            if self.steps == self.timed:  # not the final evaluation's forward, nor the paired baseline's
                self.counter.active = False
        else:
            self.counter.reset()  # anything before the timed steps (first, count, profile, warm-up)

    def section(self) -> Comm:
        n = max(self.steps, 1)
        return Comm(**{f"{k}_bytes_per_step": self.counter.bytes[k] // n for k in KINDS},
                    **{f"{k}_calls_per_step": self.counter.calls[k] / n for k in KINDS})


def _run(node: dict, out: Path, rank: int, world: int, rec: Record) -> None:
    cfg = load_config(node)
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local) if cfg.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    seed_everything(cfg.train.seed)  # the same initial model on every rank
    s = setup(cfg, device)
    s.data_seed = cfg.train.seed + 1_000_003 * rank  # each rank its own batches
    counter = CommCounter()
    s.model = wrap(s.model, cfg.dist.mode, device, counter, world, zero2=cfg.dist.shard == "grad_op",
                   bf16=cfg.dist.mixed_precision == "bf16")
    rec.env = Env(**describe(device))
    steps = TimedSteps(counter, cfg.train.steps)
    try:
        measure(cfg, s, out, rec, on_step=steps)
    finally:
        rec.comm = steps.section()
        if rec.attribution is not None:
            rec.comm.comm_ms = rec.attribution.categories.get("communication")


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    out = root / f"rank{rank}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pid").write_text(str(os.getpid()))  # so that a test can check none is left running
    node = json.loads((root / "config.json").read_text())
    rec = Record(status="error", identity=Identity(config_key=f"rank{rank}"), config=node)
    signals.install()
    try:
        _run(node, out, rank, world, rec)
        rec.status = "ok"
    except (Exception, KeyboardInterrupt) as e:  # the job's own mapping: invalid, oom, diverged, ...
        rec.status, rec.outcome = failure(e)
    finally:
        signals.uninstall()
    write_record(out / METRICS, rec)
    if dist.is_initialized() and rec.status == "ok":
        dist.destroy_process_group()
    return 0 if rec.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
