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


def needs_pretraining(cfg: BenchConfig) -> bool:
    """model.checkpoint=auto and no base for this model yet: the pretrain stage must run first."""
    return cfg.model.checkpoint == "auto" and not auto_path(cfg).exists()


def resolve_checkpoint(cfg: BenchConfig) -> Path:
    """The file the job's base weights come from. Building never trains: a missing auto base
    is the pretrain stage's to make (bench/pretrain.py), before the job."""
    path = auto_path(cfg) if cfg.model.checkpoint == "auto" else Path(cfg.model.checkpoint)
    if not path.is_file():
        hint = "run the pretrain stage first (python -m bench.pretrain)" if cfg.model.checkpoint == "auto" \
            else "use a path, or auto"
        raise ConfigError("model.checkpoint", f"{path} is not a file ({hint})")
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


def save_weights(model: torch.nn.Module, path: Path, meta: dict) -> None:
    """Tensors only (read back with weights_only=True); a half-written file never has the name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "meta": meta}, tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
