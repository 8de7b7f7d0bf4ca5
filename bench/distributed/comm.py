"""Communication, measured at the collectives that actually ran.

- DDP: a communication hook (DDP's own extension point) sees every gradient bucket the reducer
  all-reduces, and hands it on to the default all-reduce hook unchanged.
- FSDP (fully_shard): custom all-gather and reduce-scatter objects (FSDP2's own extension point,
  `set_custom_all_gather` / `set_custom_reduce_scatter`) see every collective's tensors and call
  the default implementation.

Bytes are the collective's payload as handed to it: an all-reduce's bucket, an all-gather's
output (the unsharded parameters), a reduce-scatter's input (the unsharded gradients). What goes
over the wire depends on the algorithm (a ring all-reduce sends about 2(N-1)/N of it per rank;
gloo emulates reduce-scatter with an all-reduce); the payload is what the strategy decides.
"""
from __future__ import annotations

from collections import Counter

import torch

KINDS = ("allreduce", "allgather", "reducescatter")


class CommCounter:
    """Payload bytes and calls per kind of collective, since the last `reset()`."""

    def __init__(self):
        self.bytes: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.active = True
        self.listener = None  # a projection's recorder: told of each collective where it is issued

    def add(self, kind: str, t: torch.Tensor) -> None:
        if self.active:
            local = getattr(t, "_local_tensor", t)
            self.bytes[kind] += local.numel() * local.element_size()
            self.calls[kind] += 1
            if self.listener is not None:
                self.listener(kind, t)

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()


def ddp_hook(counter: CommCounter):
    """A DDP communication hook: count the bucket, then the default all-reduce."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(process_group, bucket):
        counter.add("allreduce", bucket.buffer())
        return allreduce_hook(process_group, bucket)
    return hook


def fsdp_comms(counter: CommCounter):
    """FSDP2 all-gather and reduce-scatter objects that count, then run the default collective."""
    from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter

    class CountedAllGather(DefaultAllGather):
        def __call__(self, output_tensor, input_tensor, group, async_op=False):
            counter.add("allgather", output_tensor)
            return super().__call__(output_tensor, input_tensor, group, async_op)

    class CountedReduceScatter(DefaultReduceScatter):
        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            counter.add("reducescatter", input_tensor)
            return super().__call__(output_tensor, input_tensor, group, op, async_op)

    return CountedAllGather(), CountedReduceScatter()
