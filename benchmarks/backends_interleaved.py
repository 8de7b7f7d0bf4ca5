"""Our LoRA layers against PEFT's, step by step in one process: paired ratios that a drifting
machine cannot bias.

    python benchmarks/backends_interleaved.py [--rounds N] [--layers eager,fused,peft,floor] [key=value ...]
    (default: lora_all r=8, alpha 16 on minimind_v1, batch 2 x seq 64, fp32)

The job-level comparison (+study=backends, benchmarks/backends.py) runs each layer as its own job,
seconds apart; on a shared host whose speed drifts by 10-20% between jobs, that is too coarse
for differences of a few percent. Here every layer's model lives in one process, built from the
same seed, and each round runs a few steps of each in turn (the order rotates every round); a
round's ratio is a layer's median step over PEFT's in that round. Printed: the median of those
ratios, their p10-p90, and a bootstrap 90% interval of the median.

`floor` is the same model with every linear layer frozen and no adapter, the norms trained so
that backward still runs through every block: what a LoRA layer that cost nothing would reach.
"""
from __future__ import annotations

import argparse

import numpy as np

from bench.models.setup import resolve_device, seed_everything, setup
from bench.models.strategies import set_trainable
from bench.cli import compose_config
from bench.measure.env import describe
from bench.report.stats import median_interval
from bench.measure.timer import StepTimer
from bench.measure.trainer import Trainer

DEFAULTS = ["model=minimind_v1", "strategy=lora_all", "lora.rank=8", "lora.alpha=16",
            "train.batch_size=2", "train.seq_len=64"]
LAYERS = {"eager": ["lora.impl=eager"], "fused": ["lora.impl=fused"], "peft": ["lora.backend=peft"],
          "floor": ["strategy=full"]}


def build(overrides: list[str], layer: str):
    cfg = compose_config([*DEFAULTS, *overrides, *LAYERS[layer]])
    device = resolve_device(cfg)
    seed_everything(cfg.train.seed)
    s = setup(cfg, device)
    if layer == "floor":
        set_trainable(s.model, [p for n, p in s.model.named_parameters() if "norm" in n])
    trainer = Trainer(s.model, cfg, s.adapters["B"])
    return cfg, device, trainer, list(s.train_batches(cfg, 8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--steps", type=int, default=3, help="steps of each layer per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--layers", default="eager,fused,peft,floor")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    layers = a.layers.split(",")
    if "peft" not in layers:
        ap.error("--layers must include peft: the ratios are to PEFT's step")
    built = {name: build(a.overrides, name) for name in layers}
    cfg, device = built["peft"][:2]
    timer = StepTimer(device, phases=False)

    def turn(name: str, n: int) -> list[float]:
        _, _, trainer, batches = built[name]
        return [trainer.step(batches[i % len(batches)], timer)[1]["step_ms"] for i in range(n)]

    for name in layers:
        turn(name, a.warmup)
    steps: dict[str, list[float]] = {name: [] for name in layers}
    for r in range(a.rounds):
        for name in layers[r % len(layers):] + layers[:r % len(layers)]:
            steps[name].append(float(np.median(turn(name, a.steps))))
    env, t, lora = describe(device), cfg.train, cfg.lora
    print(f"machine: {env['machine']}; torch {env['torch']}; {cfg.strategy.name} r={lora.rank} alpha "
          f"{lora.alpha if lora.alpha is not None else lora.rank} (scale {lora.scale:g}) on {cfg.model.name}, batch "
          f"{t.batch_size} x seq {t.seq_len}, {t.precision}; {a.rounds} rounds of {a.steps} steps per layer")
    peft = np.array(steps["peft"])
    for name in layers:
        ms = np.array(steps[name])
        line = f"{name:6s} median step {np.median(ms):8.2f} ms"
        if name != "peft":
            ratio = ms / peft
            lo, hi = median_interval(ratio)
            line += (f"; /peft median {np.median(ratio):.3f} (p10-p90 {np.percentile(ratio, 10):.3f}-"
                     f"{np.percentile(ratio, 90):.3f}; 90% interval of the median {lo:.3f}-{hi:.3f})")
        print(line)


if __name__ == "__main__":
    main()
