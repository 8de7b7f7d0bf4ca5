"""What one training step does, counted on a separate, untimed step.

- FLOPs: torch.utils.flop_counter.FlopCounterMode (matmul-class ops, forward and backward),
  with the in-place addmm_ added: its registry counts addmm but not addmm_, which the fused LoRA
  layer uses to accumulate into an output, so its products would go uncounted.
- Ops: every aten operation dispatched (forward, backward, optimizer). Many small adapter
  layers mean many small kernels; this is the count that makes that visible.
- Saved activations: what autograd keeps for backward, counted once per storage and
  excluding the parameters themselves (they are counted as weights).
- Weight, gradient and optimizer-state bytes: summed over the real tensors.
"""
from __future__ import annotations

from collections import Counter
from contextlib import ExitStack, contextmanager

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


def _addmm_inplace_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """C += A·B: 2·m·k·n, as torch counts the out-of-place addmm (the add is not counted)."""
    (m, k), (_, n) = a_shape, b_shape
    return 2 * m * k * n


EXTRA_FLOPS = {torch.ops.aten.addmm_: _addmm_inplace_flop}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.by_op[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _ptr(t: torch.Tensor) -> int | None:
    """A storage's identity: its StorageImpl (a fake tensor's storage has no data pointer, and the
    projection counts with this same class: bench/project/fake.py)."""
    try:
        return t.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a storage of their own
        return None


_ACTIVE: list["SavedTensors"] = []


def hold(tensors) -> None:
    """Tensors a step keeps for backward outside autograd's saved-tensor hooks: an activation
    checkpoint's inputs and the outputs it saves (bench/models/recompute.py). Counted by the
    active counter, if any; a no-op on every other step."""
    for counter in _ACTIVE:
        for t in tensors:
            counter._pack(t)


class SavedTensors:
    """Counts the bytes autograd saves for backward while active (and what `hold` is told of)."""

    def __init__(self, model: nn.Module, keep: bool = True, is_param=None):
        # A sharded (FSDP) parameter is a DTensor: its own storage is that of its local shard.
        self._params = {_ptr(getattr(p, "_local_tensor", p)) for p in model.parameters()}
        self._is_param = is_param  # storage id -> whether it holds parameters (FSDP's gathered ones)
        self._seen: dict[int, int] = {}
        # keep: hold every counted storage, so that none is freed and its identity reused by another
        # inside the step (two storages would count as one). A projection counts without holding (its
        # memory peak must not change), only while the forward runs: a saved tensor lives until backward.
        self._keep = [] if keep else None

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            ptr = storage._cdata
        except (RuntimeError, NotImplementedError):  # tensor subclasses without storage (a 4-bit weight)
            return t
        if storage.nbytes() and ptr not in self._params and not (self._is_param and self._is_param(ptr)):
            # Holding the storage keeps its address from being reused by another tensor
            # inside this step, which would make two storages count as one.
            if ptr not in self._seen:
                self._seen[ptr] = storage.nbytes()
                if self._keep is not None:
                    self._keep.append(storage)
        return t

    @contextmanager
    def active(self):
        _ACTIVE.append(self)
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield self
        finally:
            _ACTIVE.remove(self)


class StepCounts:
    """Context for one counted step: `with StepCounts(model) as c: ...; c.flops, c.ops`."""

    def __init__(self, model: nn.Module):
        self.flop_mode = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
        self.op_mode = OpCounter()
        self.saved = SavedTensors(model)
        self._stack = ExitStack()

    def __enter__(self) -> "StepCounts":
        self._stack.enter_context(self.flop_mode)
        self._stack.enter_context(self.op_mode)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def flops(self) -> int:
        return int(self.flop_mode.get_total_flops())

    @property
    def ops(self) -> int:
        return self.op_mode.total


def _unique(tensors) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def stored_bytes(t: torch.Tensor) -> int:
    """The bytes a tensor really holds. A wrapper subclass (torchao's NF4Tensor) reports its dense
    shape's nbytes: its inner tensors are what is stored. A bitsandbytes Params4bit holds the packed
    codes, and its quant_state the block scales. A DTensor (FSDP) keeps its global nbytes, as the
    records of sharded jobs always have."""
    if hasattr(t, "__tensor_flatten__") and type(t).__name__ != "DTensor" and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(stored_bytes(getattr(t, n)) for n in names)
    total = t.nbytes
    state = getattr(t, "quant_state", None)
    if state is not None:
        total += _quant_state_bytes(state)
    return total


def _quant_state_bytes(state) -> int:
    total = 0
    for name in ("absmax", "code", "offset"):
        v = getattr(state, name, None)
        if torch.is_tensor(v):
            total += v.nbytes
    nested = getattr(state, "state2", None)
    return total + (_quant_state_bytes(nested) if nested is not None else 0)


def weights_bytes(model: nn.Module) -> int:
    """Parameters as stored (a 4-bit base counts its packed bytes), each shared tensor once."""
    return sum(stored_bytes(p) for p in _unique(model.parameters()))


def grads_bytes(model: nn.Module) -> int:
    return sum(p.grad.nbytes for p in _unique(model.parameters()) if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer's state tensors (AdamW: exp_avg, exp_avg_sq, step)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                total += value.nbytes
    return total


def param_counts(model: nn.Module) -> dict[str, int]:
    params = _unique(model.parameters())
    return {"total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad)}
