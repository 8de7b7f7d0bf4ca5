"""Pretrained base models: so that a fine-tuning loss measures adaptation, not learning from zero.

A base is the full model trained on the unshifted Markov language (`data.shift=0`) with the
`pretrain.*` settings. Fine-tuning then runs on a shifted language (`data.shift > 0`): the loss
starts near the base's and has a known floor. Checkpoints are plain state dicts loaded with
`torch.load(weights_only=True)`, which unpickles tensors and containers only, never code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import torch

from bench.config import BenchConfig, ConfigError


def auto_path(cfg: BenchConfig) -> Path:
    """Where model.checkpoint=auto keeps the base for this model, language and pretraining."""
    what = {"model": dataclasses.asdict(dataclasses.replace(cfg.model, checkpoint=None)),
            "data": {"name": cfg.data.name, "seed": cfg.data.seed, "branching": cfg.data.branching,
                     "path": cfg.data.path},
            "pretrain": {k: v for k, v in dataclasses.asdict(cfg.pretrain).items() if k != "dir"},
            "seed": cfg.train.seed}
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.pretrain.dir) / f"{cfg.model.name}-{cfg.data.name}-{digest}.pt"


def resolve_checkpoint(cfg: BenchConfig) -> Path:
    if cfg.model.checkpoint == "auto":
        path = auto_path(cfg)
        if not path.exists():
            print(f"pretraining the base model once: {path}", file=sys.stderr, flush=True)
            pretrain(cfg, path)
        return path
    path = Path(cfg.model.checkpoint)
    if not path.is_file():
        raise ConfigError("model.checkpoint", f"{path} is not a file (use a path, or auto)")
    return path


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob["model"]
    except Exception as e:  # truncated, not a torch file, or a pickle that wants code
        raise ConfigError("model.checkpoint", f"{path}: not a readable checkpoint "
                                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError("model.checkpoint", f"{path} does not fit this model "
                                              f"({str(e).splitlines()[1].strip()[:160]})") from None


def pretrain(cfg: BenchConfig, path: Path) -> dict:
    """Train the full base model on the unshifted language; save it at `path`; return its losses."""
    from bench.timer import StepTimer
    from bench.train import Trainer, prepare, resolve_device, seed_everything

    p = cfg.pretrain
    base = dataclasses.replace(
        cfg, strategy=dataclasses.replace(cfg.strategy, name="full"),
        model=dataclasses.replace(cfg.model, checkpoint=None),
        data=dataclasses.replace(cfg.data, shift=0.0),
        lora=dataclasses.replace(cfg.lora, lr_ratio=1.0),
        train=dataclasses.replace(cfg.train, steps=p.steps, lr=p.lr, batch_size=p.batch_size,
                                  seq_len=p.seq_len, grad_accum=1, precision="fp32"))
    device = resolve_device(base)
    seed_everything(base.train.seed)
    source, model, _ = prepare(base, device)
    trainer = Trainer(model, base, device)
    gen = torch.Generator().manual_seed(base.train.seed)
    eval_gen = torch.Generator().manual_seed(10_000 + base.data.seed)
    evals = [source.batch(p.batch_size, p.seq_len, eval_gen).to(device) for _ in range(4)]
    before = trainer.evaluate(evals)
    timer = StepTimer(device, phases=False)
    for _ in range(p.steps):
        trainer.step([source.batch(p.batch_size, p.seq_len, gen).to(device)], timer)
    after = trainer.evaluate(evals)
    meta = {"eval_before": before, "eval_after": after, "floor": source.floor, "steps": p.steps,
            "model": dataclasses.asdict(base.model), "data": dataclasses.asdict(base.data)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "meta": meta}, tmp)
    tmp.replace(path)  # a half-written checkpoint is never found under its name
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return meta
