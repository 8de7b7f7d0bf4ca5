"""Data-parallel projections (bench/project/parallel.py): rank 0 of N on fake tensors under a fake
process group. Its collectives are held to closed forms over the model's parameters, its memory to
PyTorch's FSDPMemTracker on the same fake job; the two-rank gloo jobs in
tests/distributed/test_launch.py hold its bytes to measured ones."""
import math

import pytest

from bench.distributed.wrap import blocks
from bench.project.fake import fake_step
from tests.conftest import built

TINY = ["model=tiny", "train.batch_size=2", "train.seq_len=16", "lora.rank=2", "data=random", "project.gpu=H100"]


def padded(p, world: int) -> int:
    """Bytes of one parameter as FSDP2 gathers it: dim 0 split in `world` shards of ceil(rows / world)."""
    rows = p.shape[0] if p.dim() else 1
    return world * math.ceil(rows / world) * (p.numel() // max(rows, 1)) * p.element_size()


def fsdp_closed_form(model, world: int, zero2: bool = False) -> dict:
    """Per step: each block gathered for forward and again for backward (once under ZeRO-2), the root
    (embedding, head, final norm) once, as FSDP2 keeps the root's from forward; the trainable
    gradients of every unit that has some reduce-scattered once."""
    units = blocks(model)
    inner = {id(p) for u in units for p in u.parameters()}
    root = [p for p in model.parameters() if id(p) not in inner]
    gather = sum((1 if zero2 else 2) * sum(padded(p, world) for p in u.parameters()) for u in units)
    gather += sum(padded(p, world) for p in root)
    groups = [list(u.parameters()) for u in units] + [root]
    scatter = [sum(padded(p, world) for p in g if p.requires_grad) for g in groups]
    return {"allgather": {"bytes": gather, "calls": (1 if zero2 else 2) * len(units) + 1},
            "reducescatter": {"bytes": sum(scatter), "calls": sum(1 for b in scatter if b)}}


def _step(cfg_of, world, *overrides, **kw):
    return fake_step(cfg_of(*TINY, *overrides), foreach=True, world=world, **kw)


@pytest.mark.parametrize("strategy", ["full", "lora_all"])
def test_fsdp_collectives_are_the_closed_form_over_padded_shards(cfg_of, strategy):
    step = _step(cfg_of, 8, "parallel=fsdp", "project.devices=8", f"strategy={strategy}")
    _, s = built(*TINY, f"strategy={strategy}")
    assert step.comm == fsdp_closed_form(s.model, 8)


def test_zero2_gathers_each_block_once(cfg_of):
    step = _step(cfg_of, 4, "parallel=fsdp", "project.devices=4", "dist.shard=grad_op", "strategy=lora_all")
    _, s = built(*TINY, "strategy=lora_all")
    assert step.comm == fsdp_closed_form(s.model, 4, zero2=True)


@pytest.mark.parametrize("strategy", ["full", "lora_all"])
def test_fsdp_per_rank_memory_is_fsdpmemtrackers(cfg_of, strategy):
    ov = ("parallel=fsdp", "project.devices=4", f"strategy={strategy}")
    ours, theirs = _step(cfg_of, 4, *ov), _step(cfg_of, 4, *ov, memtracker=True)
    assert ours.peak_bytes == theirs.peak_bytes
    # rank 0 holds a quarter of every state, padded: the sharded weights, gradients and AdamW's two moments
    _, s = built(*TINY, f"strategy={strategy}")
    trainable = sum(padded(p, 4) for p in s.model.parameters() if p.requires_grad) // 4
    assert ours.weights_bytes == sum(padded(p, 4) for p in s.model.parameters()) // 4
    n = sum(p.requires_grad for p in s.model.parameters())
    assert ours.grads_bytes == trainable
    assert ours.optimizer_bytes == 2 * trainable + 4 * n  # AdamW's two moments, and a 4-byte step per tensor


@pytest.mark.parametrize("strategy", ["full", "lora_all"])
def test_ddp_all_reduces_every_trainable_gradient_in_ddps_buckets(cfg_of, strategy):
    step = _step(cfg_of, 8, "parallel=ddp", "project.devices=8", f"strategy={strategy}")
    _, s = built(*TINY, f"strategy={strategy}")
    grads = [p.numel() * p.element_size() for p in s.model.parameters() if p.requires_grad]
    # buckets filled in backward's order (the reverse of the parameters'), the first closed at 1 MiB, then 25
    buckets, open_, cap = 0, 0, 1 << 20
    for g in reversed(grads):
        open_ += g
        if open_ >= cap:
            buckets, open_, cap = buckets + 1, 0, 25 << 20
    assert step.comm == {"allreduce": {"bytes": sum(grads), "calls": buckets + (open_ > 0)}}
    assert step.ddp_bucket_bytes == sum(grads) and step.split["other"] == sum(grads)  # DDP's bucket copies
    # the whole model and its optimizer state on every rank: as on one device
    one = _step(cfg_of, 1, f"strategy={strategy}")
    assert (step.weights_bytes, step.grads_bytes, step.optimizer_bytes) == \
        (one.weights_bytes, one.grads_bytes, one.optimizer_bytes)


def test_each_all_gather_is_waited_for_by_the_kernel_that_reads_it(cfg_of):
    step = _step(cfg_of, 2, "parallel=fsdp", "project.devices=2", "strategy=full")
    gathers = [i for i, op in enumerate(step.ops) if op.collective == "allgather"]
    waiting = sorted(op.waits for op in step.ops if op.waits is not None)
    assert waiting == gathers  # each read once, after it was issued
    assert all(step.ops.index(next(o for o in step.ops if o.waits == i)) > i for i in gathers)
    assert sum(op.barrier for op in step.ops) == 1  # backward's end waits for the reduce-scatters


def test_each_collective_is_filed_where_in_the_step_it_is_issued(cfg_of):
    step = _step(cfg_of, 4, "parallel=fsdp", "project.devices=4", "strategy=full")
    by = step.comm_by_stage
    units = step.comm["allgather"]["calls"] // 2  # blocks; the root is gathered once, in forward
    assert by["forward"]["allgather"]["calls"] == units + 1 and by["backward"]["allgather"]["calls"] == units
    assert "reducescatter" not in by["forward"] and by["backward"]["reducescatter"] == step.comm["reducescatter"]
    assert sum(s[k]["bytes"] for s in by.values() for k in s) == sum(v["bytes"] for v in step.comm.values())


def test_fsdp_mixed_precision_gathers_bf16_and_keeps_fp32_shards(cfg_of):
    """dist.mixed_precision=bf16 (torchtitan's policy): every all-gather moves half the fp32 closed form
    (the shards cast to bf16 first), the reduce-scatter all of it (fp32), the shards of parameters,
    gradients and AdamW's state stay fp32, and the matmuls run in bf16."""
    plain = _step(cfg_of, 8, "parallel=fsdp", "project.devices=8", "strategy=full")
    mp = _step(cfg_of, 8, "parallel=fsdp", "project.devices=8", "strategy=full", "dist.mixed_precision=bf16")
    _, s = built(*TINY, "strategy=full")
    closed = fsdp_closed_form(s.model, 8)
    assert mp.comm["allgather"] == {"bytes": closed["allgather"]["bytes"] // 2, "calls": closed["allgather"]["calls"]}
    assert mp.comm["reducescatter"] == closed["reducescatter"]
    assert (mp.weights_bytes, mp.grads_bytes, mp.optimizer_bytes) == \
        (plain.weights_bytes, plain.grads_bytes, plain.optimizer_bytes)
    assert {op.dtype for op in mp.ops if op.name == "aten.mm"} == {"bf16"}
    assert {op.dtype for op in plain.ops if op.name == "aten.mm"} == {"fp32"}
