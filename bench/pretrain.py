"""The pretrain stage: train the full base model once, so a fine-tuning loss measures adaptation.

    python -m bench.pretrain model=<preset> data=markov [pretrain.steps=...]

A job with model.checkpoint=auto runs this stage first when its base does not exist yet. The
stage has its own record (its losses, steps and wall time, saved beside the checkpoint and in
the job's `pretrain` section); its time is never part of the job's `wall_s`.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from bench.models.checkpoint import auto_path, needs_pretraining, save_weights
from bench.models.setup import resolve_device, seed_everything, setup
from bench.cli import preflight
from bench.config import BenchConfig, ConfigError, load_config
from bench.measure.timer import StepTimer
from bench.measure.trainer import Trainer


def base_config(cfg: BenchConfig) -> BenchConfig:
    """The configuration the base is trained with: full fine-tuning on the unshifted language."""
    p = cfg.pretrain
    return dataclasses.replace(
        cfg, strategy=dataclasses.replace(cfg.strategy, name="full"),
        model=dataclasses.replace(cfg.model, checkpoint=None),
        data=dataclasses.replace(cfg.data, shift=0.0),
        lora=dataclasses.replace(cfg.lora, lr_ratio=1.0),
        train=dataclasses.replace(cfg.train, steps=p.steps, lr=p.lr, batch_size=p.batch_size, seq_len=p.seq_len,
                                  grad_accum=1, precision="fp32", eval_batches=4))


def pretrain(cfg: BenchConfig, path: Path) -> dict:
    """Train the base for `cfg`, save it at `path`, return the stage's record."""
    t0 = time.perf_counter()
    base = base_config(cfg)
    device = resolve_device(base)
    seed_everything(base.train.seed)
    s = setup(base, device)
    trainer = Trainer(s.model, base, s.adapters["B"])
    before = trainer.evaluate(s.eval_batches)
    timer = StepTimer(device, phases=False)
    for micro in s.train_batches(base, base.train.steps):
        trainer.step(micro, timer)
    after = trainer.evaluate(s.eval_batches)
    meta = {"path": str(path), "eval_before": before, "eval_after": after, "floor": s.source.floor,
            "steps": base.train.steps, "wall_s": time.perf_counter() - t0,
            "model": dataclasses.asdict(base.model), "data": dataclasses.asdict(base.data)}
    save_weights(s.model, path, meta)
    return meta


def ensure_base(cfg: BenchConfig) -> dict | None:
    """Run the stage if this job's auto base is missing; its record, or None if it did not run."""
    if not needs_pretraining(cfg):
        return None
    path = auto_path(cfg)
    print(f"pretraining the base model once: {path}", file=sys.stderr, flush=True)
    return pretrain(cfg, path)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        bench = load_config(cfg)
        path = auto_path(bench)
        meta = pretrain(bench, path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{path}: eval loss {meta['eval_before']:.3f} -> {meta['eval_after']:.3f} "
          f"(floor {meta['floor']:.3f}) after {meta['steps']} steps")


if __name__ == "__main__":
    preflight(sys.argv[1:])
    main()
