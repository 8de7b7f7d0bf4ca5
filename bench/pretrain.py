"""`python -m bench.pretrain model=<preset> data=markov [pretrain.steps=...]`: train and save a base.

Prints the checkpoint's path; fine-tune from it with model.checkpoint=<path> (or use
model.checkpoint=auto in any job, which pretrains once and reuses the file).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from bench.checkpoint import auto_path, pretrain
from bench.config import ConfigError, load_config
from bench.preflight import preflight


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
