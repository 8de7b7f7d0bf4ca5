"""A data-parallel step projected: rank 0 of N, on fake tensors, under a fake process group of N ranks.

    fsdp  the measured path's own wrapping (bench/distributed/wrap.py: FSDP2's fully_shard per block,
          the same counting all-gather and reduce-scatter), on fake parameters. Every rank holds 1/N.
    ddp   DistributedDataParallel's C++ reducer reads real storage, so its bucketing is replayed here,
          as the reducer does it after its first step: the trainable gradients in the order backward
          makes them, a bucket per dtype, the first closed at 1 MiB, the others at 25 MiB (DDP's
          defaults); a bucket is all-reduced when its last gradient is ready, after the default hook's
          division by N, and copied back to the gradients when backward ends.

The fake process group (torch.testing's FakeStore) answers every collective at once: what its
collectives cost is priced afterwards, on a link (bench/project/links.py), from the payload each
one was handed.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

DDP_FIRST_BUCKET = 1 << 20          # torch.distributed._DEFAULT_FIRST_BUCKET_BYTES
DDP_BUCKET = 25 * (1 << 20)         # DistributedDataParallel's bucket_cap_mb=25


@contextlib.contextmanager
def fake_world(world: int):
    """A fake process group of `world` ranks, this process rank 0; the one before it put back after."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialized: a projection runs in its own process")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def mesh(world: int):
    """FSDP's device mesh, made outside the fake mode: its rank bookkeeping reads real tensors."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world,))


class DDPBuckets:
    """DDP's reducer on one rank, replayed with the operations it runs (see the module's docstring)."""

    def __init__(self, model: nn.Module, counter, world: int):
        self.counter, self.world = counter, world
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers: dict[torch.dtype, torch.Tensor] = {}  # DDP's persistent bucket storage, one per dtype
        for dtype in {p.dtype for p in self.params}:
            self.buffers[dtype] = torch.empty(sum(p.numel() for p in self.params if p.dtype == dtype), dtype=dtype)
        self._hooks = [p.register_post_accumulate_grad_hook(self._ready) for p in self.params]
        self._reset()

    @property
    def bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    def _reset(self) -> None:
        self.offset = dict.fromkeys(self.buffers, 0)
        self.open = {d: [] for d in self.buffers}      # gradients in the bucket being filled
        self.start = dict.fromkeys(self.buffers, 0)    # its first element in the dtype's buffer
        self.closed = dict.fromkeys(self.buffers, 0)   # buckets all-reduced so far, per dtype
        self.filled: list[tuple[nn.Parameter, torch.Tensor]] = []

    def _ready(self, p: torch.Tensor) -> None:
        d = p.dtype
        view = self.buffers[d][self.offset[d]:self.offset[d] + p.numel()]
        view.copy_(p.grad.reshape(-1))  # the reducer copies each gradient into its bucket
        self.filled.append((p, view))
        self.offset[d] += p.numel()
        self.open[d].append(p)
        cap = DDP_FIRST_BUCKET if self.closed[d] == 0 else DDP_BUCKET
        if (self.offset[d] - self.start[d]) * self.buffers[d].element_size() >= cap:
            self._launch(d)

    def _launch(self, d: torch.dtype) -> None:
        bucket = self.buffers[d][self.start[d]:self.offset[d]]
        bucket.div_(self.world)  # the default all-reduce hook divides before it sums
        self.counter.add("allreduce", bucket)
        self.start[d], self.open[d] = self.offset[d], []
        self.closed[d] += 1

    def finish(self) -> None:
        """Backward's end: the last partial buckets go, then every gradient is copied back from its bucket."""
        for d in self.buffers:
            if self.open[d]:
                self._launch(d)
        for p, view in self.filled:
            p.grad.copy_(view.view_as(p.grad))
        self._reset()

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


@contextlib.contextmanager
def fsdp_storage(memory):
    """FSDP2 allocates and frees its unsharded parameters by resizing their storage, which no dispatch
    mode sees: tell `memory` (LiveMemory) of each resize."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

    alloc, free = _fsdp_param.alloc_storage, _fsdp_param.free_storage

    def counted_alloc(t):
        alloc(t)
        memory.resized(t)

    def counted_free(t):
        free(t)
        memory.resized(t)

    init = _fsdp_param.FSDPParam.init_all_gather_outputs

    def counted_init(self, *args, **kwargs):  # created by torch.empty: parameters, not the phase's
        init(self, *args, **kwargs)
        for t in self.all_gather_outputs:
            memory.resized(t)

    _fsdp_param.alloc_storage = _fsdp_param_group.alloc_storage = counted_alloc
    _fsdp_param.free_storage = counted_free
    _fsdp_param.FSDPParam.init_all_gather_outputs = counted_init
    try:
        yield
    finally:
        _fsdp_param.alloc_storage = _fsdp_param_group.alloc_storage = alloc
        _fsdp_param.free_storage = free
        _fsdp_param.FSDPParam.init_all_gather_outputs = init
