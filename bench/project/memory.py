"""Live tensor memory of a fake step, by category, and its peak (bench/project/fake.py's observer);
PyTorch's MemTracker and FSDPMemTracker, which the tests hold it equal to.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.measure import counters

FSDP_SPLIT = {"Sharded Param": "parameters", "Unsharded Param": "parameters", "Buffer": "buffers",
              "Sharded Grad": "gradients", "Unsharded Grad": "gradients", "OptState": "optimizer",
              "Activation": "activations", "Temp": "temporaries", "All Gather": "temporaries",
              "Reduce Scatter": "temporaries", "Inputs": "other"}
SPLIT = {"Parameter": "parameters", "Buffer": "buffers", "Gradient": "gradients", "Optstate": "optimizer",
         "Activation": "activations", "Temp": "temporaries", "Other": "other"}




def local_shard(t):
    """A DTensor's (FSDP's sharded parameters, their gradients and AdamW's state) own shard."""
    return t._local_tensor if type(t).__name__ == "DTensor" else t


class LiveMemory(TorchDispatchMode):
    """Live tensor bytes by category, and their peak. Every storage an operation creates is counted
    once, in the category of the phase that made it (forward: activations; backward and optimizer:
    temporaries), until it is freed; a parameter's gradient moves to gradients when it is
    accumulated. Parameters, buffers and optimizer state exist before the step."""

    def __init__(self, model, optimizer):
        super().__init__()
        self.phase = "activations"
        self.stage = "forward"       # forward | backward | optimizer: each has its own peak
        self.stages: dict[str, tuple[int, dict]] = {}
        self.current = dict.fromkeys(SPLIT.values(), 0)
        self.live: dict[int, tuple[int, str]] = {}
        self.total = self.peak = 0
        self.at_peak: dict = dict(self.current)
        # (storage, bytes) allocated, (storage, -1) freed, in order: bench/project/allocator.py replays them
        self.events: list[tuple[int, int]] = []
        self._unnamed = 0
        for p in model.parameters():
            self._fixed(p, "parameters")
        for b in model.buffers():
            self._fixed(b, "buffers")
        for state in optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    self._fixed(v, "optimizer")
        self._hooks = [p.register_post_accumulate_grad_hook(self._grad) for p in model.parameters() if p.requires_grad]
        self.before_step = len(self.events)  # what exists before the step: weights, buffers, AdamW's state
        self.params = [p for p in model.parameters() if p.requires_grad]

    def _fixed(self, t: torch.Tensor, category: str) -> None:
        t = local_shard(t)
        packed = counters.stored_bytes(t)
        if packed != t.numel() * t.element_size() or not self._track(t, category):  # a 4-bit weight: packed
            self.hold(packed, category)

    def hold(self, nbytes: int, category: str) -> None:
        """Bytes held all step that no operation of the step creates (DDP's gradient buckets)."""
        self._unnamed -= 1
        self.events.append((self._unnamed, nbytes))
        self._move(nbytes, category)

    def _move(self, nbytes: int, category: str) -> None:
        self.current[category] += nbytes
        self.total += nbytes
        if self.total > self.peak:
            self.peak, self.at_peak = self.total, dict(self.current)
        if self.total > self.stages.get(self.stage, (-1, None))[0]:
            self.stages[self.stage] = (self.total, dict(self.current))

    def _track(self, t: torch.Tensor, category: str) -> bool:
        try:
            st = local_shard(t).untyped_storage()
        except (RuntimeError, NotImplementedError):
            return False
        key = st._cdata
        if key not in self.live:
            n = st.nbytes()
            self.live[key] = (n, category)
            self.events.append((key, n))
            weakref.finalize(st, self._free, key)
            self._move(n, category)
        return True

    def _free(self, key: int) -> None:
        n, category = self.live.pop(key, (0, None))
        if category is not None:
            self.events.append((key, -1))
            self.current[category] -= n
            self.total -= n

    def _grad(self, p: torch.Tensor) -> None:
        self._recategorize(p.grad, "gradients")

    def _recategorize(self, t: torch.Tensor, category: str) -> None:
        key = local_shard(t).untyped_storage()._cdata
        if key in self.live and self.live[key][1] != category:
            n, old = self.live[key]
            self.current[old] -= n
            self.current[category] += n
            self.live[key] = (n, category)
        elif key not in self.live:
            self._track(t, category)

    def settle_grads(self, params) -> None:
        """Gradients assigned rather than accumulated (FSDP's sharded ones) are gradients too."""
        for p in params:
            if p.grad is not None:
                self._grad(p)

    def resized(self, t: torch.Tensor) -> None:
        """A storage resized in place (FSDP's unsharded parameters, allocated and freed per block)."""
        st = local_shard(t).untyped_storage()
        key, n = st._cdata, st.nbytes()
        if key not in self.live:
            self._track(t, "parameters")
            return
        old, category = self.live[key]
        self.current[category] -= old
        self.total -= old
        self.live[key] = (n, "parameters")
        self.events += [(key, -1)] * (old > 0) + [(key, n)] * (n > 0)
        self._move(n, "parameters")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, self.phase)
        return out

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


class _NoHook:
    def remove(self) -> None:
        pass


def _skip_frozen(tracker, model) -> None:
    """MemTracker hooks every parameter's gradient, and a frozen parameter refuses a hook ("cannot
    register a hook on a tensor that doesn't require gradient"): mark those as hooked already. They
    have no gradient to track."""
    for p in model.parameters():
        if not p.requires_grad:
            tracker._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())


def memtracker(model, optimizer):
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    _skip_frozen(tracker, model)
    tracker.track_external(model, optimizer)
    return tracker


def fsdp_memtracker(model, optimizer):
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    tracker = FSDPMemTracker(model, optimizer)
    _skip_frozen(tracker, model)
    tracker.track_inputs = lambda inputs: None  # noqa: E731 (the batch is not the module's)
    return tracker


