"""The model as each data-parallel rank trains it: DDP, or FSDP2's fully_shard per block.

    ddp   every rank holds the whole model; after backward, the gradients of the trainable
          parameters are all-reduced in buckets. Frozen weights never travel.
    fsdp  every rank holds 1/N of every parameter; each block's parameters are all-gathered
          before its forward and again before its backward (frozen or not), and the gradients of
          the trainable ones are reduce-scattered. Blocks first, then the root (embedding, head),
          torchtitan's order.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.distributed.comm import CommCounter, ddp_hook, fsdp_comms


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the first ModuleList (ours, Hugging Face's, under PEFT's wrapper)."""
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m):
            return list(m)
    return []


def wrap(model: nn.Module, mode: str, device: torch.device, counter: CommCounter, world: int, mesh=None,
         zero2: bool = False, bf16: bool = False) -> nn.Module:
    """`zero2`: ZeRO-2 (FSDP's grad_op): a block keeps its gathered parameters from forward to backward;
    otherwise FSDP2's default, ZeRO-3 for the blocks (the root keeps its own: backward needs them at
    once). `mesh`: one made already (a projection makes it outside its fake mode). `bf16`: torchtitan's
    MixedPrecisionPolicy: fp32 shards gathered as bf16 (the cast before the all-gather), the
    gradients reduce-scattered in fp32 into fp32 shards; AdamW updates fp32."""
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        ddp.register_comm_hook(None, ddp_hook(counter))
        return ddp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = mesh if mesh is not None else init_device_mesh(device.type, (world,))
    units = [*blocks(model), model]
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp, **({"reshard_after_forward": False} if zero2 else {}))
    gather, scatter = fsdp_comms(counter)
    for unit in units:
        unit.set_custom_all_gather(gather)
        unit.set_custom_reduce_scatter(scatter)
    return model
