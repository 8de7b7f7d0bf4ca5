"""The fused LoRA layer (`lora.impl=fused`): the same function as bench/build/lora.py's eager
layer, y = x Wᵀ + b + s · (x_d Aᵀ) Bᵀ, as one autograd node with a hand-written backward.

Why it dispatches fewer operations than the eager layer:
- one node instead of three linears, a multiply and an add, so autograd keeps one record and
  the backward runs no view/transpose bookkeeping for nodes that need no gradient;
- the scale s rides on the matmuls as `alpha` (addmm computes beta·C + alpha·M₁M₂ in one
  kernel), so no tensor is ever multiplied by s on its own;
- the adapter's product is accumulated into the base output in place (`addmm_`), as Unsloth does;
- gradients that nothing needs (the frozen W, a bias) are never computed.

Computation order by shape (RunLoRA's idea). With N rows (tokens), in/out the layer's widths
and r the rank, both orders below compute the same numbers:
    forward   separate: x Wᵀ + s (x Aᵀ) Bᵀ       extra over the base: N·r·(in + out)
              merged:   x (W + s B A)ᵀ            extra: out·r·in (+ N·r·in for x Aᵀ, which dB needs)
    dx        separate: g W + s (g B) A           extra: N·r·in   (g B is needed for dA anyway)
              merged:   g (W + s B A)             extra: out·r·in
So the forward merges when in < N and the backward when out < N: many tokens through a narrow
layer. Only in fp32: rounding W + s·B·A to bf16/fp16 would lose most of the small update.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.build.lora import LoRALinear

LOW_PRECISION = (torch.bfloat16, torch.float16)


def orders(n: int, in_features: int, out_features: int, dtype: torch.dtype) -> tuple[bool, bool]:
    """(merge the forward, merge dx's backward) for N rows, by the FLOP counts in the docstring."""
    if dtype in LOW_PRECISION:
        return False, False
    return in_features < n, out_features < n


class _FusedLoRA(torch.autograd.Function):
    """Inputs: x (N, in), x_d (the dropped-out x for the adapter path, or None: x itself), W, bias,
    A (r, in), B (out, r), s. All 2-D; the layer reshapes."""

    @staticmethod
    def forward(ctx, x, x_d, weight, bias, lora_a, lora_b, scale):
        dtype = _compute_dtype(x)
        if dtype is not None:  # autocast: cast once here, so no operation below is cast again
            x, weight, lora_a, lora_b = (t.to(dtype) for t in (x, weight, lora_a, lora_b))
            x_d = None if x_d is None else x_d.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        xin = x if x_d is None else x_d
        merge_fwd, merge_bwd = orders(x.shape[0], x.shape[1], weight.shape[0], x.dtype)
        merge_fwd = merge_fwd and x_d is None  # a dropped-out adapter input cannot share W's product
        if dtype is None:  # the common case: no context manager to enter (a few microseconds per layer)
            y, xa = _forward(x, xin, weight, bias, lora_a, lora_b, scale, merge_fwd)
        else:
            with torch.autocast(x.device.type, enabled=False):
                y, xa = _forward(x, xin, weight, bias, lora_a, lora_b, scale, merge_fwd)
        ctx.save_for_backward(x, x_d, weight, lora_a, lora_b, xa)
        ctx.scale, ctx.merge_bwd, ctx.has_bias = scale, merge_bwd, bias is not None
        return y

    @staticmethod
    def backward(ctx, g):
        x, x_d, weight, lora_a, lora_b, xa = ctx.saved_tensors
        s = ctx.scale
        need_x, need_xd, need_w, need_b, need_a, need_bb, _ = ctx.needs_input_grad
        if g.dtype != x.dtype:
            g = g.to(x.dtype)
        dx = dxd = dw = db = da = dbb = None
        merge = ctx.merge_bwd and x_d is None
        gb = torch.mm(g, lora_b) if (need_a or need_xd or (need_x and not merge)) else None  # (N, r)
        if need_x and merge:
            dx = torch.mm(g, torch.addmm(weight, lora_b, lora_a, alpha=s))
        elif need_x:
            dx = torch.mm(g, weight)
            if x_d is None:
                dx.addmm_(gb, lora_a, alpha=s)  # the adapter's share, added in place
        if need_xd:
            # Dropout's own backward node masks this and adds it to x's gradient.
            dxd = torch.addmm(x_d, gb, lora_a, beta=0, alpha=s)
        if need_a:
            # addmm with beta=0 ignores its first argument: s·(gB)ᵀ x_d in one kernel, no scale op.
            da = torch.addmm(lora_a, gb.t(), x if x_d is None else x_d, beta=0, alpha=s)
        if need_bb:
            dbb = torch.addmm(lora_b, g.t(), xa, beta=0, alpha=s)
        if need_w:
            dw = torch.mm(g.t(), x)
        if need_b and ctx.has_bias:
            db = g.sum(0)
        return dx, dxd, dw, db, da, dbb, None


def _forward(x, xin, weight, bias, lora_a, lora_b, scale, merge_fwd):
    xa = torch.mm(xin, lora_a.t())  # (N, r): dB needs it whichever order runs
    if merge_fwd:
        w = torch.addmm(weight, lora_b, lora_a, alpha=scale)  # W + s·B·A, no transpose needed
        return (torch.mm(x, w.t()) if bias is None else torch.addmm(bias, x, w.t())), xa
    y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
    return y.addmm_(xa, lora_b.t(), alpha=scale), xa


def _compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class FusedLoRALinear(LoRALinear):
    """LoRALinear whose forward and backward are one hand-written autograd node (same parameters,
    same init, same `merge()`): swap one for the other and the losses agree."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        x_d = None
        if isinstance(self.dropout, nn.Dropout) and self.training:
            x_d = self.dropout(x2)
        y = _FusedLoRA.apply(x2, x_d, self.base.weight, self.base.bias, self.lora_a, self.lora_b, self.scale)
        return y.reshape(*shape[:-1], self.out_features)
