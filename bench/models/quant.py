"""QLoRA's frozen base: linear weights stored in 4 bits (NF4) and dequantized for every product.

    native backend (torchao's NF4Tensor, what torchtune's QLoRA uses):
        W (out x in)  ->  codes: 4 bits per weight, two per byte
                          scales: one absmax per `block_size` weights, itself quantized to int8
                          second-level scales: one per `scaler_block_size` scales (double quantization)
        forward   y  = x · dequant(W)ᵀ          backward  dx = dy · dequant(W)
    peft backend (bitsandbytes' Linear4bit, quant_type nf4, the layer Hugging Face's QLoRA runs on):
        the same codes; absmax per block, compressed to 8 bits with its own fp32 scale per 256

A frozen weight needs no gradient, so the backward dequantizes again instead of keeping the dense
weight: that is QLoRA's memory saving, and its time cost, twice per layer per step. Under the
profiler every dequantization of the native layer opens an `lb::dequantize` range, so the
attribution measures it as a category of its own (bench/measure/attribution.py).

Bytes per weight, native: 1/2 + 1/block + itemsize/(block·scaler_block), plus a mean and the 16
code values per tensor (`nf4_bytes`, held against the stored tensors in tests).
"""
from __future__ import annotations

import dataclasses

import contextlib
import io
import logging
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.profiler import record_function

from bench.config import ConfigError, QuantConfig
from bench.measure.counters import stored_bytes
from bench.record.schema import Quant

NF4_CODES = 16  # the code book, stored with every tensor


def _torchao():
    """torchao's NF4, imported quietly: its import prints a line per CUDA kernel library it cannot load."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            logging.getLogger("torchao").setLevel(logging.ERROR)
            from torchao.quantization import to_nf4
    except ImportError:
        raise ConfigError("quant.base", "quant.base=nf4 on the native backend needs torchao: "
                                        "pip install -e \".[quant]\"") from None
    return to_nf4


def _dequantize(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if torch.autograd._profiler_enabled():  # two extra ops otherwise: only under the profiler
        with record_function("lb::dequantize"):
            return weight.to(dtype)
    return weight.to(dtype)


class _LinearNF4(torch.autograd.Function):
    """torchao's linear_nf4, with the dequantizations named for the profiler."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, _dequantize(weight, x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return grad @ _dequantize(weight, grad.dtype), None


class FrozenNF4Linear(nn.Linear):
    """A frozen nn.Linear whose weight is an NF4Tensor (torchtune's FrozenNF4Linear)."""

    def __init__(self, linear: nn.Linear, block_size: int, scaler_block_size: int):
        nn.Module.__init__(self)  # no dense weight is allocated
        self.in_features, self.out_features = linear.in_features, linear.out_features
        to_nf4 = _torchao()
        self.weight = nn.Parameter(to_nf4(linear.weight.detach().contiguous(), block_size, scaler_block_size),
                                   requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _LinearNF4.apply(x, self.weight)
        return y if self.bias is None else y + self.bias

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The dense weight, for DoRA's weight norm (bench/models/lora.py)."""
        return _dequantize(self.weight, dtype)


def nf4_bytes(numel: int, block_size: int, scaler_block_size: int, itemsize: int) -> int:
    """Closed form of one NF4Tensor's storage: codes, int8 scales, their scales, mean, code book."""
    blocks = numel // block_size
    return numel // 2 + blocks + (blocks // scaler_block_size) * itemsize + itemsize + NF4_CODES * itemsize


def check_layer(name: str, linear: nn.Linear, q: QuantConfig, backend: str) -> None:
    """A layer NF4 cannot block is refused, naming it and its width."""
    n = linear.in_features * linear.out_features
    if n % q.block_size:
        raise ConfigError("quant.block_size", f"{q.block_size} does not divide {name}'s {linear.out_features} x "
                                              f"{linear.in_features} = {n} weights")
    if backend == "native" and q.scaler_block_size is not None and (n // q.block_size) % q.scaler_block_size:
        raise ConfigError("quant.scaler_block_size", f"{q.scaler_block_size} does not divide {name}'s "
                                                     f"{n // q.block_size} blocks of {q.block_size} weights")


def _frozen_linears(model: nn.Module, q: QuantConfig, adapted: list[str], frozen_known: bool = True) -> list[str]:
    """The layers to quantize: the bases of the adapted layers, or (scope frozen) every linear whose
    weight does not train and is not shared (the tied head: the embedding reads that matrix dense).
    `frozen_known` false: before PEFT has frozen anything, every such linear (no strategy that trains
    a linear at full rank takes a quantized base: bench/config.py)."""
    if q.scope == "adapted":
        return list(adapted)
    count: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        count[id(p)] = count.get(id(p), 0) + 1
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and count[id(m.weight)] == 1
            and (not frozen_known or not m.weight.requires_grad)]


def _base_name(model: nn.Module, name: str) -> str:
    """An adapted layer's frozen linear: the LoRA layer's `base` child (native)."""
    return f"{name}.base" if hasattr(model.get_submodule(name), "base") else name


def auto_scaler_block(blocks: list[int], largest: int = 256) -> int:
    """torchao's second-level block (256), halved until it divides every layer's count of blocks:
    a small model's layers (tiny's wk: 128 blocks of 64) then quantize without a key to set."""
    s = largest
    while s > 1 and any(b % s for b in blocks):
        s //= 2
    return s


def quantize_native(model: nn.Module, q: QuantConfig, adapted: list[str]) -> Quant:
    """Replace the frozen linears by FrozenNF4Linear, in place, after the strategy has wrapped them."""
    adapted_bases = {_base_name(model, n) for n in adapted}
    names = [_base_name(model, n) if n in adapted else n for n in _frozen_linears(model, q, adapted)]
    before = after = 0
    for name in names:
        check_layer(name, model.get_submodule(name), q, "native")
    if q.scaler_block_size is None:
        sizes = [model.get_submodule(n).in_features * model.get_submodule(n).out_features for n in names]
        q = dataclasses.replace(q, scaler_block_size=auto_scaler_block([n // q.block_size for n in sizes]))
    for name in names:
        linear = model.get_submodule(name)
        before += stored_bytes(linear.weight)
        parent_name, _, child = name.rpartition(".")
        new = FrozenNF4Linear(linear, q.block_size, q.scaler_block_size)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        after += stored_bytes(new.weight)
    return Quant(scheme=q.base, library="torchao", scope=q.scope, layers=names, block_size=q.block_size,
                 scaler_block_size=q.scaler_block_size, bytes_before=before, bytes_after=after,
                 adapted=sum(n in adapted_bases for n in names))


def _bnb():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("quant.base", "quant.base=nf4 on the peft backend needs bitsandbytes: "
                                        "pip install -e \".[quant]\"") from None
    return bnb


def quantize_bnb(model: nn.Module, q: QuantConfig, targets: list[str], compute_dtype: torch.dtype) -> Quant:
    """Before PEFT wraps them: the target linears become bitsandbytes Linear4bit (nf4), as
    from_pretrained(quantization_config=BitsAndBytesConfig(load_in_4bit=True)) makes them. The model
    is marked as loaded in 4 bits, which is what makes PEFT wrap them with its bnb LoRA layer."""
    bnb = _bnb()
    names = _frozen_linears(model, q, targets, frozen_known=False)
    before = after = 0
    for name in names:
        linear = model.get_submodule(name)
        check_layer(name, linear, q, "peft")
        before += stored_bytes(linear.weight)
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=compute_dtype, quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(linear.weight.detach().to("cpu").contiguous(), requires_grad=False,
                                         quant_type="nf4", blocksize=q.block_size)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        layer = layer.to(linear.weight.device)  # quantizes
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
        after += stored_bytes(layer.weight)
    model.is_loaded_in_4bit = True
    return Quant(scheme=q.base, library="bitsandbytes", scope=q.scope, layers=names, block_size=q.block_size,
                 scaler_block_size=None, bytes_before=before, bytes_after=after,
                 adapted=sum(n in set(targets) for n in names))
