"""A projected job (project.gpu=NAME[,NAME...]): one fake step, priced for each named device.

The record is of kind `projected`: its `projection` section holds every figure, its `memory`,
`time` and `work` sections stay empty (nothing was measured), and its machine label says onto
which devices it was projected. The report keeps it out of every measured verdict.

Memory. MemTracker's peak is what the tensors hold. The CUDA caching allocator holds more: it
rounds blocks, splits them and keeps freed ones cached, and the CUDA context takes memory of its
own before any tensor. The first is replayed, not fitted: the step's allocations and frees, in
order, run through the allocator's rules (bench/project/allocator.py) for a few steps, and the
reserve is what memory_reserved() reads after them; the context is assumed (CUDA_CONTEXT). No
constant is fitted to a published reserve: every one is a check (results/reference/published).
A configuration fits when the allocator, replayed at the device's capacity, never runs out: past the
capacity it returns its cache and tries again, as c10's does, so the reserve on a device may be
smaller than the unbounded one.
The largest batch that fits: the step has a peak per stage (forward, backward, optimizer). The
forward's and the backward's are taken as affine in the batch, their slope the activations and
temporaries at that peak per sample (weights, gradients, buffers and optimizer state do not grow
with the batch); the optimizer's as constant. The batch's peak is the largest of the three (a test
holds this to the fake steps of other batches on the same job), and its reserve the peak times this
batch's replayed reserve over its peak.
"""
from __future__ import annotations

import dataclasses

import torch

from bench.config import BenchConfig, ConfigError
from bench.project import links
from bench.project.allocator import OutOfMemory, replay
from bench.project.devices import Device, lookup
from bench.project.fake import fake_step
from bench.project.timeline import project_time
from bench.record.schema import DeviceProjection, Env, ModelShape, Params, Projection, Record

RESERVE_FACTOR = 1.10      # the reserve over the peak where no allocation order was recorded (MemTracker's; assumed)
REPLAYED_STEPS = 3         # identical steps: the second already reads what every later one does
CUDA_CONTEXT = 512 * 2**20  # the CUDA context and cuBLAS workspace (assumed; typically 0.3-0.6 GiB)


def devices(cfg: BenchConfig) -> list[Device]:
    return [lookup(n) for n in cfg.project.gpu]


def reserve_factor(step) -> float:
    """The allocator's reserve over the step's peak: the replayed caching allocator's after
    REPLAYED_STEPS steps (bench/project/allocator.py), or RESERVE_FACTOR with no recorded order."""
    if not step.events or not step.peak_bytes:
        return RESERVE_FACTOR
    return max(replay(step.events, step.before_step, REPLAYED_STEPS).reserved) / step.peak_bytes


def reserved(peak: int, factor: float) -> int:
    return int(factor * peak) + CUDA_CONTEXT


def on_device(step, memory: int, unbounded: int) -> tuple[int, bool, int | None]:
    """The reserve on a device of `memory` bytes, whether the step fits there, and how often per step
    the allocator returns its cache to fit. Where the unbounded reserve exceeds the device, the
    allocator is replayed at its capacity (less the CUDA context): it returns its cache and tries
    again before it gives up, so a step whose tensors fit may still run (each retry frees and
    re-allocates device memory, which synchronises: a slower step than projected); out of memory,
    the reserve it would need is the unbounded one."""
    if unbounded <= memory or not step.events:
        return unbounded, unbounded <= memory, 0 if step.events else None
    try:
        r = replay(step.events, step.before_step, REPLAYED_STEPS, memory - CUDA_CONTEXT)
    except OutOfMemory:
        return unbounded, False, None
    return max(r.reserved) + CUDA_CONTEXT, True, r.retries[-1]


def peak_at(stages: dict, batch: int, at: int) -> float:
    """The step's peak at batch `at`, from its stage peaks measured at batch `batch`."""
    out = 0.0
    for name, s in stages.items():
        grows = name != "optimizer"
        out = max(out, s["peak"] + (at - batch) * s["batch_bytes"] / batch if grows else s["peak"])
    return out


def largest_batch(memory: int, stages: dict, batch: int, factor: float, limit: int = 1 << 20) -> int | None:
    """The largest batch whose modelled reserve fits `memory`; 0: not even 1; None: no stages."""
    if not stages:
        return None
    fits = lambda b: reserved(int(peak_at(stages, batch, b)), factor) <= memory  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi < limit and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # the peak grows with the batch: bisect
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# The GPU host's cost per eager operation (dispatcher, before the launch) and per autograd node (recorded in
# the forward, run by the engine in the backward), fixed so that a projection does not depend on the machine
# computing it or on its load (issue #25: the same job projected twice here gave 197 and 301 ms when this
# machine's calibration was used). Their values: bench/measure/calibrate.py's per-operation and per-node
# constants on this project's AMD EPYC VM, quiet (2.3 us, which results/reference/published/check.md first
# used; 1.8 us, three calibrations on 2026-12-02 gave 1.75-1.81); a GPU server's host is taken to be no slower.
GPU_HOST_OP_US = 2.3
GPU_HOST_NODE_US = 1.8


def host_costs(cfg: BenchConfig) -> tuple[float, float, str]:
    """The host's cost per operation and per autograd node (project.host_op_us / host_node_us, or the fixed
    GPU host constants), and where they come from."""
    p = cfg.project
    op_us = GPU_HOST_OP_US if p.host_op_us is None else p.host_op_us
    node_us = GPU_HOST_NODE_US if p.host_node_us is None else p.host_node_us
    said = [f"project.host_op_us={op_us:g}" if p.host_op_us is not None else
            f"{op_us:g} us per operation, fixed (bench/project/job.py GPU_HOST_OP_US; project.host_op_us overrides)",
            f"project.host_node_us={node_us:g}" if p.host_node_us is not None else
            f"{node_us:g} us per autograd node, fixed (GPU_HOST_NODE_US; project.host_node_us overrides)"]
    return op_us * 1e-6, node_us * 1e-6, "; ".join(said)


def project_job(cfg: BenchConfig, rec: Record) -> str:
    targets = devices(cfg)
    world = cfg.project.devices
    step = fake_step(cfg, foreach=True, world=world)  # every target is a CUDA device: AdamW's default there
    timed = step  # lengths that vary: memory at the longest (train.seq_len), time at the mean
    mean = cfg.project.mean_seq_len
    if mean is not None and mean != cfg.train.seq_len:
        timed = fake_step(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seq_len=mean)),
                          foreach=True, world=world)
    grows = [s["batch_bytes"] for k, s in step.stages.items() if k != "optimizer"]
    per_sample = max(grows) // cfg.train.batch_size if grows else None
    op_s, node_s, source = host_costs(cfg)
    rec.kind = "projected"
    rec.plan, rec.quant = step.plan, step.quant
    rec.model_shape = step.shape if isinstance(step.shape, ModelShape) else None
    rec.params = Params(total=step.params_total, trainable=step.params_trainable)
    names = ", ".join(d.name for d in targets)
    rec.env = Env(torch=torch.__version__, python="", device="projected", device_name=names, cuda=None, cpu="",
                  cpu_count=None, threads=torch.get_num_threads(), hostname="", git_commit=None,
                  machine=f"projection onto {names} (not measured)")
    factor = reserve_factor(step)
    out = []
    for d in targets:
        fab = links.fabric(d.name, world, cfg.project.nodes, cfg.project.link, cfg.project.network) if world > 1 else None
        tl = project_time(timed.ops, d, op_s, fabric=fab, host_node_s=node_s)
        res, fits, retries = on_device(step, d.memory_bytes, reserved(step.peak_bytes, factor))
        here = (res - CUDA_CONTEXT) / step.peak_bytes if step.peak_bytes else factor  # this device's reserve over the peak
        out.append(DeviceProjection(
            device=d.name, source=d.source, memory_bytes=d.memory_bytes, reserved_bytes=res,
            fits=fits,
            largest_batch=largest_batch(d.memory_bytes, step.stages, cfg.train.batch_size, here),
            step_ms=tl.step_s * 1e3, host_ms=tl.host_s * 1e3, busy_ms=tl.busy_s * 1e3, compute_ms=tl.compute_s * 1e3,
            memory_ms=tl.memory_s * 1e3, idle_fraction=tl.idle_fraction, bound=tl.bound, kernels=tl.kernels,
            host_op_us=op_s * 1e6, launch_us=d.launch_s * 1e6, host_node_us=node_s * 1e6,
            host_wait_ms=tl.host_wait_s * 1e3,
            comm_ms=tl.comm_s * 1e3, exposed_comm_ms=tl.comm_wait_s * 1e3,
            comm_ms_by_kind={k: v * 1e3 for k, v in (tl.comm_by_kind or {}).items()},
            link=fab.describe() if fab else None,
            link_source="; ".join(dict.fromkeys(x.source for x in (fab.link, fab.network) if x)) if fab else None,
            alloc_retries=retries))
    rec.projection = Projection(
        dtype=cfg.project.dtype, peak_bytes=step.peak_bytes, split=step.split, per_sample_bytes=per_sample,
        stages=step.stages,
        flops_per_step=timed.flops, ops_per_step=len(timed.ops), weights_bytes=step.weights_bytes,
        grads_bytes=step.grads_bytes, optimizer_state_bytes=step.optimizer_bytes,
        activations_bytes=step.saved_bytes, host_calibration=source,
        seconds=step.seconds + (timed.seconds if timed is not step else 0.0), devices=out, ranks=world,
        mean_seq_len=mean, train_tokens=cfg.project.train_tokens, mode=cfg.dist.mode if world > 1 else None,
        shard=cfg.dist.shard if world > 1 and cfg.dist.mode == "fsdp" else None, nodes=cfg.project.nodes,
        collectives=timed.comm, collectives_by_stage=timed.comm_by_stage, ddp_bucket_bytes=step.ddp_bucket_bytes,
        autograd_nodes=timed.autograd_nodes)
    return "ok"


def projectable(cfg: BenchConfig) -> None:
    """What a projection cannot do, refused in one line each."""
    if cfg.train.compile or cfg.train.cuda_graphs:
        raise ConfigError("project.gpu", "compiled or captured steps are not projected (their kernels are "
                                         "not the eager step's operations)")
    if cfg.train.grad_accum > 1:
        raise ConfigError("project.gpu", "the projected step is one micro-batch (train.grad_accum=1)")
    if cfg.search.batch:
        raise ConfigError("project.gpu", "the projection finds the largest batch itself (search.batch=false)")
    if cfg.lora.backend == "peft":
        raise ConfigError("project.gpu", "PEFT's get_peft_model moves its adapters with .to(), which fake "
                                         "parameters refuse (\"Couldn't swap\"), and bitsandbytes has no fake "
                                         "kernels; project with lora.backend=native, which adapts the same layers")

