"""Build stage: everything a job needs before its first step, and nothing that trains.

`setup(cfg, device)` makes the model (ours, a built Llama or a local checkpoint), loads its
base weights, applies the strategy with the chosen backend, and makes the token source and
the held-out batches. The job, the pretrain stage and benchmarks/overhead_interleaved.py all
start here, so they cannot drift apart.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from bench.models.checkpoint import load_weights, resolve_checkpoint
from bench.models.data import TokenSource, make_source
from bench.models.lora import adapter_params
from bench.models.lora import lora_modules
from bench.models.model import Transformer
from bench.models.recompute import apply_checkpointing
from bench.models.strategies import apply_strategy, get_strategy
from bench.config import BenchConfig, ConfigError
from bench.record.schema import ModelShape, Plan, Quant

# The held-out set is drawn from its own stream, the same for every job on one language.
EVAL_SEED_OFFSET = 10_000


@dataclass
class Setup:
    model: nn.Module
    plan: Plan
    shape: ModelShape
    source: TokenSource
    adapters: dict[str, list[nn.Parameter]]  # by role, "A" and "B": LoRA+ reads B
    eval_batches: list[torch.Tensor]
    device: torch.device
    quant: Quant | None = None    # quant.base: what was quantized, and its bytes
    data_seed: int | None = None
    data_context: object = nullcontext  # where batches are drawn (a projection: outside its fake mode)  # None: train.seed; a data-parallel rank draws from its own stream

    def train_batches(self, cfg: BenchConfig, n_steps: int) -> Iterator[list[torch.Tensor]]:
        """Each step's micro-batches, made and moved just before the step (outside its clock:
        the timer synchronizes at start), so no run holds all of its data."""
        t = cfg.train
        gen = torch.Generator().manual_seed(t.seed if self.data_seed is None else self.data_seed)
        for _ in range(n_steps):
            with self.data_context():
                micro = [self.source.batch(t.batch_size, t.seq_len, gen).to(self.device) for _ in range(t.grad_accum)]
            yield micro


def resolve_device(cfg: BenchConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for, but torch sees no CUDA device (use device=cpu or auto)")
    dev = torch.device("cuda" if cfg.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    if cfg.train.precision == "fp16" and dev.type != "cuda":
        raise ConfigError("train.precision", "fp16 needs a CUDA device (its grad scaler is CUDA-only); use bf16 or fp32")
    if cfg.train.cuda_graphs and dev.type != "cuda":
        raise ConfigError("train.cuda_graphs", f"CUDA graphs need a CUDA device; this job runs on {dev.type}")
    if dev.type == "cuda" and cfg.dist.nproc > torch.cuda.device_count():
        raise ConfigError("dist.nproc", f"{cfg.dist.nproc} ranks need one GPU each; this machine has "
                                        f"{torch.cuda.device_count()}")
    if dev.type == "cuda":
        # The budget as the caching allocator's own limit: past it, allocation fails as a real OOM
        # would. Set for every job (1.0 without a budget): the limit outlives the job in the process.
        budget = cfg.train.memory_budget_gb
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(1.0 if budget is None else min(1.0, budget * 2**30 / total), dev)
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def build_model(cfg: BenchConfig) -> nn.Module:
    """The base model, before any strategy."""
    if cfg.model.kind == "native":
        return Transformer(cfg.model)
    from bench.models import hf

    if cfg.model.kind == "hf_llama":
        return hf.build_llama(cfg.model)
    return hf.load_local(cfg.model.path, weights=cfg.project.gpu is None)  # a projection needs config.json only


def model_shape(cfg: BenchConfig, model: nn.Module) -> ModelShape:
    if cfg.model.kind == "native":
        m = cfg.model
        return ModelShape(dim=m.dim, n_layers=m.n_layers, hidden=m.hidden, vocab_size=m.vocab_size,
                          max_seq_len=m.max_seq_len)
    from bench.models import hf

    return ModelShape(**hf.shape(model))


def _apply(cfg: BenchConfig, model: nn.Module) -> tuple[nn.Module, Plan, dict, Quant | None]:
    """The strategy with its variants: the adapters (DoRA's magnitudes among them), then the base
    quantized under them (QLoRA), then the blocks checkpointed."""
    strategy = get_strategy(cfg.strategy.name)
    if cfg.lora.backend == "peft" and not strategy.train_all:
        from bench.models.peft_backend import apply_peft, peft_adapter_params

        model, plan, quant = apply_peft(model, strategy, cfg.lora, cfg.peft, cfg.quant, cfg.train.precision)
        return model, plan, peft_adapter_params(model), quant
    plan = apply_strategy(model, strategy, cfg.lora)
    if not strategy.uses_lora:  # a sweep over LoRA keys runs this strategy once (bench/job.py config_key)
        plan.notes.append(f"the lora.* keys (backend, impl, rank, alpha, ...) do not apply to strategy={strategy.name}")
    quant = None
    if cfg.quant.base != "none":
        from bench.models.quant import quantize_native

        quant = quantize_native(model, cfg.quant, plan.adapted)
        for _, layer in lora_modules(model):  # DoRA's magnitude: the norms of the weight as it is now stored
            layer.reset_magnitude()
    return model, plan, adapter_params(model), quant


def setup(cfg: BenchConfig, device: torch.device, data_context=nullcontext) -> Setup:
    """The model with its base weights and strategy, on `device`, and its data (drawn under
    `data_context`: a projection draws real tokens outside its fake tensors)."""
    model = build_model(cfg)
    checkpoint = resolve_checkpoint(cfg) if cfg.model.checkpoint else None
    if checkpoint is not None:
        load_weights(model, checkpoint)
    shape = model_shape(cfg, model)
    if shape.max_seq_len and cfg.train.seq_len > shape.max_seq_len:
        raise ConfigError("train.seq_len", f"{cfg.train.seq_len} exceeds the model's maximum {shape.max_seq_len}")
    encode = None
    if cfg.model.kind == "hf" and cfg.data.name == "jsonl":
        from bench.models.hf import local_tokenizer

        encode = local_tokenizer(cfg.model.path)  # the checkpoint's own tokenizer, if it has one
    with data_context():
        source = make_source(cfg.data, shape.vocab_size, encode)
    model, plan, adapters, quant = _apply(cfg, model)
    note = apply_checkpointing(model, cfg.train.checkpointing)
    if note:
        plan.notes.append(note)
    if quant is not None:
        plan.notes.append(f"quant.base={quant.scheme} ({quant.library}): {len(quant.layers)} frozen linears stored in "
                          f"4 bits, {quant.bytes_before / 2**20:.2f} -> {quant.bytes_after / 2**20:.2f} MiB")
    plan.checkpoint = None if checkpoint is None else str(checkpoint)
    # Only a move that moves: Module.to on fake parameters (a projection) cannot swap them even in place.
    if any(t.device != device for t in [*model.parameters(), *model.buffers()]):
        model.to(device)
    model.train()
    t = cfg.train
    eval_gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + cfg.data.seed)
    with data_context():
        evals = [source.batch(t.batch_size, t.seq_len, eval_gen).to(device) for _ in range(t.eval_batches)]
    return Setup(model, plan, shape, source, adapters, evals, device, quant, data_context=data_context)
