"""The LoRA layer: a frozen nn.Linear plus a trainable low-rank update.

            ┌──────────────────────────┐
    x ──┬──►│ W (out × in), frozen     │──────────────────┐
        │   └──────────────────────────┘                  ▼
        │   ┌─────────┐  ┌─────────┐  ┌────────────┐     (+) ──► y = W x + s · B A x
        └──►│ dropout │─►│ A (r×in)│─►│ × s        │─► B (out×r)
            └─────────┘  └─────────┘  └────────────┘

s = alpha / r (or alpha / sqrt(r) with rsLoRA). One of A, B starts at zero, so at step 0 the
adapted model computes exactly what the base model computes. The scale is applied to the
r-wide intermediate, not the out-wide result: same function, fewer multiplications; at s = 1
there is no multiply at all. `merge()` folds s · B @ A into W for inference, once.

DoRA (Liu et al. 2024, `dora=True`) splits the adapted weight into a direction and a trained
magnitude m, one per output row:

    y = m / ‖W + s·B·A‖ ⊙ (W x + s · B A x)        ‖·‖ per row, recomputed every step, detached

written as PEFT writes it, W x + (g - 1)·W x + g·s·B A x with g = m / ‖W + s·B·A‖, so that the
base product is computed once (with dropout > 0 PEFT multiplies the dropped input by W a second
time; so does this layer). The norm reads the whole base weight, dequantized for a 4-bit base,
every step: DoRA's extra cost, which the profiler sees as an `lb::dora_norm` range.

`adapter_dtype=torch.float32` under a bf16 base is PEFT's default (autocast_adapter_dtype): A, B
and m are stored and trained in fp32, each layer casts its input up for the adapter, and the sum
is taken in fp32 and cast back to the base's dtype, as PEFT's Linear.forward does. It costs fp32
adapter states, an fp32 copy of every adapted layer's input saved for backward, and DoRA's norm
in fp32.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.profiler import record_function

class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, scale: float, dropout: float = 0.0,
                 init: str = "A", init_std: float = 0.02, dora: bool = False,
                 adapter_dtype: torch.dtype | None = None):
        super().__init__()
        # What trains is set by the strategy (bench/models/strategies.py: set_trainable), not here.
        self.base = base
        self.rank, self.scale = rank, scale
        self.in_features, self.out_features = base.in_features, base.out_features
        w = base.weight
        dtype = adapter_dtype or w.dtype
        self.upcast = dtype != w.dtype  # else no cast at all: autocast's own casts stay as they were
        self.lora_a = nn.Parameter(torch.zeros(rank, self.in_features, device=w.device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=dtype))
        # No module at all when dropout is off: nn.Dropout(0) would still dispatch an op.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_adapter(init, init_std)
        # DoRA's magnitude starts at the adapted weight's row norms, so step 0 computes W x exactly.
        self.magnitude = nn.Parameter(self.weight_norm(dtype)) if dora else None

    def reset_adapter(self, init: str, init_std: float = 0.02) -> None:
        """Init schemes of Hayou et al. 2024: A random/B zero ("A"), B random/A zero ("B")."""
        with torch.no_grad():
            self.lora_a.zero_()
            self.lora_b.zero_()
            if init == "A":
                nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear and PEFT
            elif init == "B":
                nn.init.kaiming_uniform_(self.lora_b, a=math.sqrt(5))
            elif init == "gaussian":
                nn.init.normal_(self.lora_a, std=init_std)  # MiniMind's model_lora.py: std 0.02
            else:
                raise ValueError(f"unknown LoRA init {init!r}")

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """The trainable adapter parameters by role, A (down) and B (up): torchtune's
        AdapterModule protocol, with roles so that LoRA+ can give B its own learning rate."""
        roles = {"A": self.lora_a, "B": self.lora_b}
        return roles if self.magnitude is None else {**roles, "M": self.magnitude}

    def base_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The dense base weight (a 4-bit base dequantized: bench/models/quant.py)."""
        dequantized = getattr(self.base, "dequantized", None)
        return dequantized(dtype) if dequantized is not None else self.base.weight.to(dtype)

    @torch.no_grad()
    def weight_norm(self, dtype: torch.dtype) -> torch.Tensor:
        """‖W + s·B·A‖ per output row, outside autograd (DoRA's section 4.3: treated as a constant)."""
        if torch.autograd._profiler_enabled():
            with record_function("lb::dora_norm"):
                return self._weight_norm(dtype)
        return self._weight_norm(dtype)

    def _weight_norm(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.base_weight(dtype) + self.scale * (self.lora_b.to(dtype) @ self.lora_a.to(dtype))
        return torch.linalg.norm(w, dim=1).to(dtype)

    @torch.no_grad()
    def reset_magnitude(self) -> None:
        """DoRA: m = the current row norms (after the base changed, e.g. when it was quantized)."""
        if self.magnitude is not None:
            self.magnitude.copy_(self.weight_norm(self.magnitude.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:  # the update already lives in the base weight
            return self.base(x)
        dropped = self.dropout(x.to(self.lora_a.dtype) if self.upcast else x)  # PEFT casts the input up first
        low = F.linear(dropped, self.lora_a)
        if self.scale != 1.0:
            low = low * self.scale
        result = self.base(x)
        lora = F.linear(low, self.lora_b)
        if self.magnitude is None:
            out = result + lora
        else:
            dtype = self.lora_a.dtype if self.upcast else result.dtype
            g = self.magnitude / self.weight_norm(dtype)
            # PEFT's order of operations; with dropout in training, the base product of the dropped input.
            base = result if isinstance(self.dropout, nn.Identity) or not self.training else \
                F.linear(dropped, self.base_weight(dtype))
            out = result + (g - 1) * base + g * lora
        return out.to(result.dtype) if self.upcast else out

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """Fold s·B@A into the base weight and return the plain nn.Linear. Idempotent: a second
        call must not add the update twice, so the layer remembers that it merged."""
        if not self.merged:
            if self.magnitude is not None:  # the merged weight is the normalised direction times m
                w = self.base.weight + self.scale * (self.lora_b @ self.lora_a).to(self.base.weight.dtype)
                self.base.weight.copy_(w * (self.magnitude / torch.linalg.norm(w, dim=1)).unsqueeze(1))
            else:
                self.base.weight += self.scale * (self.lora_b @ self.lora_a).to(self.base.weight.dtype)
            self.merged = True
        return self.base

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}"
                + (", dora" if self.magnitude is not None else ""))


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def adapter_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Every adapter parameter of `model` by role ("A", "B", and DoRA's magnitudes "M"), asked of the
    layers themselves."""
    out: dict[str, list[nn.Parameter]] = {"A": [], "B": [], "M": []}
    for _, module in lora_modules(model):
        for role, p in module.adapter_params().items():
            out[role].append(p)
    return out


def merge_all(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear in `model` by its merged nn.Linear (in place).

    A base weight shared with another module (the tied head and embedding) is copied first:
    merging into the shared tensor would change the embedding too.
    """
    shared = _shared_params(model)
    for name, module in lora_modules(model):
        if id(module.base.weight) in shared:
            module.base.weight = nn.Parameter(module.base.weight.detach().clone(), requires_grad=False)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.merge())
    return model


def _shared_params(model: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}
