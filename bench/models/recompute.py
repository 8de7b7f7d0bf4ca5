"""Activation checkpointing (train.checkpointing): keep less for backward, recompute the rest.

    none       autograd keeps every activation its backward needs
    blocks     each transformer block keeps only its inputs; its forward runs again in backward
               (torch.utils.checkpoint, non-reentrant)
    selective  the same, but the blocks' matmul outputs are kept (PyTorch's selective activation
               checkpointing, create_selective_checkpoint_contexts): only the cheap operations between
               them (norms, activations, RoPE, casts, a 4-bit base's dequantization) run twice
    selective_op  torchtitan's selective op AC (its default): each block keeps the fused attention
               kernel's outputs and every second matmul's (the 1st, 3rd, ... in its forward), and
               recomputes the others

Non-reentrant only: the reentrant mode needs an input that requires grad, which a frozen model's
embedding output does not (transformers #26221; PEFT's enable_input_require_grads is its fix), and
PyTorch recommends the non-reentrant mode. Hugging Face models are switched on by their own
activation_checkpointing_enable (gradient_checkpointing_enable before transformers 5); native
blocks by wrapping their forward. Both go through `checkpointed`, which marks the recompute for
the profiler (an `lb::recompute` range: the attribution's `recompute` category) and tells the
step's counters what the checkpoint holds (its inputs, and the matmul outputs it saves), so
memory.activations_bytes counts what a checkpointed step really keeps.
"""
from __future__ import annotations

import functools
import types

import torch
import torch.nn as nn
from torch.autograd.profiler import record_function
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from bench.config import ConfigError
from bench.measure.counters import hold

_aten = torch.ops.aten
# The matmuls selective checkpointing keeps (an nn.Linear dispatches mm or addmm, attention's own products bmm).
SAVED_OPS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default}


def _policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    if func in SAVED_OPS:
        out = getattr(ctx, "op_output", None)  # PyTorch 2.12 on; older ones do not say
        if not ctx.is_recompute and torch.is_tensor(out):
            hold([out])
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


# torchtitan's _save_list (models/llama3/infra/parallelize.py): the attention kernels, and matmuls by turns.
SDPA_OPS = {getattr(_aten, n).default for n in ("_scaled_dot_product_flash_attention",
                                                "_scaled_dot_product_efficient_attention",
                                                "_scaled_dot_product_cudnn_attention",
                                                "_scaled_dot_product_flash_attention_for_cpu") if hasattr(_aten, n)}
_MATMULS = SAVED_OPS - {_aten.bmm.default}  # the linear layers' matmuls (attention's bmm is not torchtitan's mm)


def op_policy():
    """torchtitan's policy function, with its own matmul count (one per block call)."""
    counts = {"forward": 0, "recompute": 0}

    def policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
        if func in _MATMULS:
            key = "recompute" if ctx.is_recompute else "forward"
            counts[key] += 1
            save = counts[key] % 2 == 1  # torchtitan: "all compute ops, except every second mm"
        else:
            save = func in SDPA_OPS
        if not save:
            return CheckpointPolicy.PREFER_RECOMPUTE
        out = getattr(ctx, "op_output", None)
        if not ctx.is_recompute and torch.is_tensor(out):
            hold([out])
        return CheckpointPolicy.MUST_SAVE
    return policy


def _op_contexts():
    return create_selective_checkpoint_contexts(op_policy())


def checkpointed(mode: str, function, *args, **kwargs):
    """`function(*args, **kwargs)` under a non-reentrant checkpoint; its second run is the recompute."""
    calls = [0]

    def run(*a, **k):
        calls[0] += 1
        if calls[0] > 1 and torch.autograd._profiler_enabled():
            with record_function("lb::recompute"):
                return function(*a, **k)
        return function(*a, **k)

    hold([a for a in args if torch.is_tensor(a)])  # what the recompute starts from
    extra = ({"context_fn": functools.partial(create_selective_checkpoint_contexts, _policy)} if mode == "selective"
             else {"context_fn": _op_contexts} if mode == "selective_op" else {})
    return checkpoint(run, *args, use_reentrant=False, **extra, **kwargs)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks: native `layers`, or a Hugging Face model's decoder layers."""
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h", "blocks") and len(m):
            return list(m)
    return []


def apply_checkpointing(model: nn.Module, mode: str) -> str | None:
    """Switch checkpointing on, in place; the plan's note, or None for mode none."""
    if mode == "none":
        return None
    found = blocks(model)
    if not found:
        raise ConfigError("train.checkpointing", f"{mode} checkpoints transformer blocks, and this model has none "
                                                 "(no ModuleList named layers, h or blocks)")
    hf = _hf_model(model)
    if hf is not None:
        enable = getattr(hf, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The function each layer calls (the attribute Hugging Face's GradientCheckpointingLayer reads).
        for m in hf.modules():
            if hasattr(m, "_gradient_checkpointing_func"):
                m._gradient_checkpointing_func = functools.partial(checkpointed, mode)
        how = "the model's own activation checkpointing, non-reentrant"
    else:
        for block in found:
            block.forward = types.MethodType(_checkpointed_forward(mode, type(block).forward), block)
        how = "torch.utils.checkpoint around each block's forward, non-reentrant"
    kept = {"blocks": "their inputs", "selective": "their inputs and matmul outputs (selective)",
            "selective_op": "their inputs, attention outputs and every second matmul output (torchtitan's op AC)"}[mode]
    return f"train.checkpointing={mode}: {len(found)} blocks keep {kept} and recompute in backward ({how})"


def _checkpointed_forward(mode: str, forward):
    def wrapped(self, *args, **kwargs):
        if not (self.training and torch.is_grad_enabled()):  # evaluation: nothing to recompute
            return forward(self, *args, **kwargs)
        return checkpointed(mode, functools.partial(forward, self), *args, **kwargs)
    return wrapped


def _hf_model(model: nn.Module):
    """The transformers PreTrainedModel inside our wrapper (and inside PEFT's), if there is one."""
    for m in model.modules():
        if hasattr(m, "supports_gradient_checkpointing") and hasattr(m, "gradient_checkpointing_enable"):
            return m
    return None
