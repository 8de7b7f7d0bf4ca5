"""The fused LoRA layer (`lora.impl=fused`): the same function as bench/models/lora.py's eager
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

Layout of the rank-wide products. Each has one side of r (8, say) and one of N, in or out. A BLAS
kernel writes a short, wide result (r × N) much faster than its tall, narrow transpose (N × r):
on the AMD EPYC development machine (N = 128, out = 1408, r = 8), g·B took 74.4 us as (N × r) and
33.6 us as Bᵀ·gᵀ (r × N), and the B gradient 82.2 us as gᵀ·x_a (out × r) against 42.3 us as
x_aᵀ·g (r × out) (results/reference/backends/amd-epyc-2-threads/fused_layout.txt;
benchmarks/fused_layout.py measures them on the machine at hand). So x Aᵀ and g B are kept as
their transposes (r × N), and dB is computed as (r × out): B is stored transposed, so that
result is already in B's layout and autograd keeps it as it is.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.autograd.profiler import record_function

from bench.models.lora import LoRALinear

LOW_PRECISION = (torch.bfloat16, torch.float16)
_NO_RANGE = nullcontext()


def _base():
    """Under the profiler, a range around the frozen weight's own products, so that the
    attribution (bench/measure/attribution.py) files them as base matmuls and only the rest of
    this node as the adapter's. No range otherwise: record_function dispatches operations."""
    # is_compiling first: Dynamo traces it, while _profiler_enabled() would break the graph.
    if not torch.compiler.is_compiling() and torch.autograd._profiler_enabled():
        return record_function("lb::base_matmul")
    return _NO_RANGE


def orders(n: int, in_features: int, out_features: int, dtype: torch.dtype) -> tuple[bool, bool]:
    """(merge the forward, merge dx's backward) for N rows, by the FLOP counts in the docstring."""
    if dtype in LOW_PRECISION:
        return False, False
    return in_features < n, out_features < n


class _FusedLoRA(torch.autograd.Function):
    """Inputs: x (..., in), x_d (the dropped-out x for the adapter path, or None: x itself), W,
    bias, A (r, in), B (out, r), s. The leading dimensions are flattened in here, not by view
    nodes outside: two autograd nodes fewer per layer."""

    @staticmethod
    def forward(ctx, x, x_d, weight, bias, lora_a, lora_b, scale):
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        x_d = None if x_d is None else x_d.reshape(-1, x_d.shape[-1])
        dtype = _compute_dtype(x)
        if dtype is not None:  # autocast: cast once here, so no operation below is cast again
            x, weight, lora_a, lora_b = (t.to(dtype) for t in (x, weight, lora_a, lora_b))
            x_d = None if x_d is None else x_d.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        xin = x if x_d is None else x_d
        merge_fwd, merge_bwd = orders(x.shape[0], x.shape[1], weight.shape[0], x.dtype)
        merge_fwd = merge_fwd and x_d is None  # a dropped-out adapter input cannot share W's product
        if dtype is None:  # the common case: no context manager to enter (a few microseconds per layer)
            y, xat = _forward(x, xin, weight, bias, lora_a, lora_b, scale, merge_fwd)
        else:
            with torch.autocast(x.device.type, enabled=False):
                y, xat = _forward(x, xin, weight, bias, lora_a, lora_b, scale, merge_fwd)
        ctx.save_for_backward(x, x_d, weight, lora_a, lora_b, xat)
        ctx.scale, ctx.merge_bwd, ctx.has_bias, ctx.lead = scale, merge_bwd, bias is not None, lead
        return y.view(*lead, y.shape[-1])

    @staticmethod
    def backward(ctx, g):
        x, x_d, weight, lora_a, lora_b, xat = ctx.saved_tensors
        s, lead = ctx.scale, ctx.lead
        need_x, need_xd, need_w, need_b, need_a, need_bb, _ = ctx.needs_input_grad
        g = g.reshape(-1, g.shape[-1])
        if g.dtype != x.dtype:
            g = g.to(x.dtype)
        dx = dxd = dw = db = da = dbb = None
        merge = ctx.merge_bwd and x_d is None
        # (g B)ᵀ, r × N, computed as Bᵀ gᵀ: the short, wide layout (module docstring).
        gbt = torch.mm(lora_b.t(), g.t()) if (need_a or need_xd or (need_x and not merge)) else None
        if need_x and merge:
            dx = torch.mm(g, torch.addmm(weight, lora_b, lora_a, alpha=s)).view(*lead, -1)
        elif need_x:
            with _base():
                dx = torch.mm(g, weight)
            if x_d is None:
                dx.addmm_(gbt.t(), lora_a, alpha=s)  # the adapter's share, added in place
            dx = dx.view(*lead, -1)
        if need_xd:
            # Dropout's own backward node masks this and adds it to x's gradient.
            dxd = torch.addmm(x_d, gbt.t(), lora_a, beta=0, alpha=s).view(*lead, -1)
        if need_a:
            # addmm with beta=0 ignores its first argument: s·(gB)ᵀ x_d in one kernel, no scale op.
            da = torch.addmm(lora_a, gbt, x if x_d is None else x_d, beta=0, alpha=s)
        if need_bb:
            # s·gᵀ(x_d Aᵀ) computed as its transpose s·(A x_dᵀ) g, r × out; B is stored
            # transposed (FusedLoRALinear), so the view's layout is B's own and nothing is copied.
            dbb = torch.addmm(lora_b.t(), xat, g, beta=0, alpha=s).t()
        if need_w:
            with _base():
                dw = torch.mm(g.t(), x)
        if need_b and ctx.has_bias:
            db = g.sum(0)
        return dx, dxd, dw, db, da, dbb, None


def _forward(x, xin, weight, bias, lora_a, lora_b, scale, merge_fwd):
    xat = torch.mm(lora_a, xin.t())  # (x_d Aᵀ)ᵀ, r × N: dB needs it whichever order runs
    if merge_fwd:
        w = torch.addmm(weight, lora_b, lora_a, alpha=scale)  # W + s·B·A, no transpose needed
        return (torch.mm(x, w.t()) if bias is None else torch.addmm(bias, x, w.t())), xat
    with _base():
        y = torch.mm(x, weight.t()) if bias is None else torch.addmm(bias, x, weight.t())
    return y.addmm_(xat.t(), lora_b.t(), alpha=scale), xat


class _FusedSharedInput(torch.autograd.Function):
    """Several adapted layers that read the same x (q, k, v; gate, up) as one node, as Unsloth's
    LoRA_QKV and LoRA_MLP do. Inputs: x, s, then the members' W, bias, A and B, member by member.
    What sharing x saves over one node per layer: one product x[A₁; A₂; A₃]ᵀ instead of three,
    one dA product for the stacked A, one adapter term in dx, the base terms of dx accumulated in
    place (autograd would add the layers' dx afterwards), and two Python nodes."""

    @staticmethod
    def forward(ctx, x, scale, *members):
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        dtype = _compute_dtype(x)
        if dtype is not None:  # autocast: cast once here, as the single-layer node does
            x = x.to(dtype)
            members = tuple(None if t is None else t.to(dtype) for t in members)
        weights, biases, a_list, b_list = members[0::4], members[1::4], members[2::4], members[3::4]
        r = a_list[0].shape[0]
        a_cat = torch.cat(a_list)  # (n·r, in): the stacked down-projection
        with torch.autocast(x.device.type, enabled=False) if dtype is not None else nullcontext():
            xat = torch.mm(a_cat, x.t())  # (n·r, N), the short, wide layout
            ys = []
            for i, (w, bias, b) in enumerate(zip(weights, biases, b_list)):
                with _base():
                    y = torch.mm(x, w.t()) if bias is None else torch.addmm(bias, x, w.t())
                ys.append(y.addmm_(xat[i * r:(i + 1) * r].t(), b.t(), alpha=scale).view(*lead, w.shape[0]))
        ctx.save_for_backward(x, a_cat, xat, *weights, *b_list)
        ctx.r, ctx.scale, ctx.lead = r, scale, lead
        ctx.has_bias = [bias is not None for bias in biases]
        return tuple(ys)

    @staticmethod
    def backward(ctx, *grads):
        x, a_cat, xat, *saved = ctx.saved_tensors
        n, r, s = len(grads), ctx.r, ctx.scale
        weights, b_list = saved[:n], saved[n:]
        gs = [g.reshape(-1, g.shape[-1]).to(x.dtype) for g in grads]
        gbt = torch.empty(n * r, x.shape[0], dtype=x.dtype, device=x.device)  # the stacked (g B)ᵀ
        for i, (g, b) in enumerate(zip(gs, b_list)):
            torch.mm(b.t(), g.t(), out=gbt[i * r:(i + 1) * r])
        dx = None
        if ctx.needs_input_grad[0]:
            with _base():
                dx = torch.mm(gs[0], weights[0])
                for g, w in zip(gs[1:], weights[1:]):
                    dx.addmm_(g, w)
            dx = dx.addmm_(gbt.t(), a_cat, alpha=s).view(*ctx.lead, -1)
        da = torch.addmm(a_cat, gbt, x, beta=0, alpha=s).split(r)  # one product for every A
        out: list = [dx, None]
        for i, (g, b) in enumerate(zip(gs, b_list)):
            db = torch.addmm(b.t(), xat[i * r:(i + 1) * r], g, beta=0, alpha=s).t()
            out += [None, g.sum(0) if ctx.has_bias[i] and ctx.needs_input_grad[3 + 4 * i] else None, da[i], db]
        return tuple(out)


class SharedInput:
    """The adapted layers of one module that read the same input. The first member called with
    an input computes every member's output in one node; the others take theirs from here. A
    member called with another input, or a second time, computes alone, so a model that does not
    call them together still gets the right numbers."""

    def __init__(self, members: list["FusedLoRALinear"]):
        self.members = members
        self._input: torch.Tensor | None = None
        self._outputs: dict = {}

    def output(self, member: "FusedLoRALinear", x: torch.Tensor) -> torch.Tensor | None:
        """`member`'s output for x, or None where it must compute alone (then it does)."""
        if torch.compiler.is_compiling():
            return None  # Inductor fuses across the layers itself; no state to trace through
        if x is not self._input:
            self._outputs = {}
            n = x.numel() // x.shape[-1]
            if any(any(orders(n, m.in_features, m.out_features, x.dtype)) for m in self.members):
                return None  # a merged order is cheaper for some member: each computes alone
            args = [t for m in self.members for t in (m.base.weight, m.base.bias, m.lora_a, m.lora_b)]
            self._outputs = dict(zip(self.members, _FusedSharedInput.apply(x, self.members[0].scale, *args)))
            self._input = x
        y = self._outputs.pop(member, None)
        if not self._outputs:
            self._input = None  # every output handed out: hold no reference to x
        return y


def share_input(layers: list["FusedLoRALinear"]) -> bool:
    """Make these fused layers, which read the same input, compute as one node. Only layers alike
    in what that node assumes: same input width, rank and scale, no adapter dropout (each layer
    draws its own mask), a frozen base. Returns whether they were grouped."""
    alike = len({(m.in_features, m.rank, m.scale) for m in layers}) == 1
    if len(layers) < 2 or not alike or not all(_groupable(m) for m in layers):
        return False
    shared = SharedInput(layers)
    for m in layers:
        m.shared = shared
    return True


def _groupable(m: "FusedLoRALinear") -> bool:
    return not isinstance(m.dropout, nn.Dropout) and not m.base.weight.requires_grad


def _compute_dtype(x: torch.Tensor) -> torch.dtype | None:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def transposed_storage(p: nn.Parameter) -> nn.Parameter:
    """The same (out, r) values, stored as the rows of pᵀ (strides (1, out))."""
    return nn.Parameter(p.detach().t().contiguous().t(), requires_grad=p.requires_grad)


class FusedLoRALinear(LoRALinear):
    """LoRALinear whose forward and backward are one hand-written autograd node (same parameters,
    same init, same `merge()`): swap one for the other and the losses agree. B keeps its
    (out, r) shape but is stored transposed, so that Bᵀ is a contiguous operand and dB, computed
    as r × out, is already in B's layout."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_b = transposed_storage(self.lora_b)
        self.shared: SharedInput | None = None  # set by share_input: siblings that read the same x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        if self.shared is not None:
            y = self.shared.output(self, x)
            if y is not None:
                return y
        x_d = self.dropout(x) if self.training and isinstance(self.dropout, nn.Dropout) else None
        return _FusedLoRA.apply(x, x_d, self.base.weight, self.base.bias, self.lora_a, self.lora_b, self.scale)
