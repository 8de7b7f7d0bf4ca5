"""A job's training step on fake tensors: every operation dispatched with its real shapes and
dtypes, no memory and no arithmetic spent (torch._subclasses.fake_tensor.FakeTensorMode).

The job is built by the measured path's own build stage (bench/models/setup.py) inside the fake
mode, on the CPU device: moving fake parameters between devices fails ("Couldn't swap"), staying
on one device does not. `project.dtype=bf16` builds every parameter in bf16 (the default dtype
during the build: no `.to()`), as fine-tuning with torch_dtype=bfloat16 stores them.

AdamW's state is created first, as a measured job's first step creates it (one optimizer step on
zero gradients: no forward or backward is needed for that); the step that follows, in steady
state, runs under three observers:
- `LiveMemory`: the peak, split as PyTorch's MemTracker splits it (parameters, buffers, gradients,
  optimizer state, activations, temporaries), tracked incrementally: MemTracker rescans every live
  storage at every operation (most of a Llama-3.2-1B projection's time, profiled); a test holds the two equal;
- no FlopCounterMode: its module tracker keeps an activation checkpoint's recomputed tensors alive
  to the end of the step (a checkpointed 8-block model's backward peak 147 MiB on fake tensors
  against 69 MiB on real ones); the recorder counts each operation's FLOPs by the same rules;
- `OpRecorder`: every aten operation, its FLOPs (FlopCounterMode's registry and this project's extra
  rules, bench/measure/counters.py), the bytes it reads and writes, and whether it launches a kernel
  (a view launches none).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, shape_wrapper

from bench.config import BenchConfig
from bench.measure import counters
from bench.project.memory import FSDP_SPLIT, SPLIT, LiveMemory, fsdp_memtracker, local_shard, memtracker as _memtracker

_EXTRA = {k: shape_wrapper(v) for k, v in counters.EXTRA_FLOPS.items()}


@dataclass
class Op:
    name: str
    flops: int
    bytes: int
    kernel: bool
    dtype: str  # "bf16" | "fp16" | "fp32": the dtype its time is priced at
    collective: str | None = None  # allreduce | allgather | reducescatter: on the communication stream,
                                   # `bytes` its payload (bench/distributed/comm.py)
    waits: int | None = None       # the index of the collective whose output this kernel reads first
    barrier: bool = False          # backward's end: the compute stream waits for every collective issued
    nodes: float = 0.0             # autograd nodes the engine runs around it, each a host cost (backward's share)


_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


# Views whose schemas carry no alias annotation: metadata on the device too, no kernel.
_VIEWS = {"aten._unsafe_view", "aten._reshape_alias", "aten.alias", "aten.detach", "aten.lift_fresh"}


def _launches(func) -> bool:
    """A view (its outputs alias an input and nothing is written) is metadata: no kernel."""
    returns = func._schema.returns
    if str(func.overloadpacket) in _VIEWS:
        return False
    return not (returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns))


def _fake_only(func, out) -> bool:
    """A query FakeTensor itself dispatches (prim.device: 14,529 of a Llama-3.2-3B LoRA step's 21,418
    recorded calls) that eager PyTorch answers without the dispatcher: neither an operation nor a kernel."""
    return func.namespace == "prim" and not isinstance(out, torch.Tensor)


def _footprint(t: torch.Tensor) -> int:
    """The bytes a kernel moves for one tensor argument: its distinct elements. A broadcast input
    (an expand: stride 0 along a dimension) is read once, not once per element of the output."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def kernel_bytes(inputs: list, outputs: list) -> int:
    """Bytes read and written by one kernel: each distinct input tensor once (x * x reads x once),
    each output once. An in-place op's output is its input: read and written, two transfers."""
    seen, total = set(), 0
    for t in inputs:
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += _footprint(local_shard(t))
    return total + sum(_footprint(local_shard(t)) for t in outputs if isinstance(t, torch.Tensor))


# Fused optimizers whose schema marks the gradients written (argument 1): they write them only to unscale
# them in place, given a grad_scale (AMP's); otherwise the kernel reads them.
_UNSCALES = {"aten._fused_adamw_", "aten._fused_adam_", "aten._fused_sgd_"}


def _written(func, args, kwargs, out) -> list:
    """What a kernel writes: its outputs, or, for an in-place op that returns nothing (the foreach
    family: torch._foreach_mul_(exp_avg_sqs, beta2)), the arguments its schema marks as written."""
    if func._schema.returns:
        return tree_flatten(out)[0]
    unscaled = str(func.overloadpacket) not in _UNSCALES or kwargs.get("grad_scale") is not None
    return tree_flatten([a for i, (a, spec) in enumerate(zip(args, func._schema.arguments))
                         if spec.alias_info is not None and spec.alias_info.is_write and (i != 1 or unscaled)])[0]


def autograd_nodes(loss: torch.Tensor) -> int:
    """The nodes `loss.backward()` runs: its graph, AccumulateGrad included. Each costs the host a node's
    bookkeeping (recorded in the forward, run by the engine) beyond the operations it dispatches, and many
    dispatch none (an add passes its gradient on): counted from the graph, not from the operations."""
    seen, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(f for f, _ in node.next_functions)
    return len(seen)


def spread_nodes(ops: list[Op], nodes: int) -> None:
    """Backward's nodes over backward's operations, evenly: the engine interleaves them with what they
    dispatch. (On a CPU the order is moot; on a GPU it keeps the host's cost inside the backward.)"""
    run = [op for op in ops if not op.collective and not op.barrier]
    for op in run:  # a backward that dispatched nothing has no node either
        op.nodes = nodes / len(run)


def _storage(t: torch.Tensor):
    try:
        return local_shard(t).untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):
        return None


class OpRecorder(TorchDispatchMode):
    """Every operation of the step in dispatch order; collectives (told by `collective`) in place."""

    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []
        self.gathered: dict[int, int] = {}  # an all-gather's output storage -> the collective's index
        self.stage = "forward"              # where in the step a collective is issued
        self.by_stage: dict[str, dict[str, dict[str, int]]] = {}  # stage -> kind -> {bytes, calls}
        self.host: set[int] = set()         # storages that live in host memory on the target (AdamW's step counts)

    def _host_only(self, args) -> bool:
        """On CUDA, AdamW (foreach, not capturable) keeps each step count as a 0-dim CPU tensor: adding
        to it and reading it (`.item()`, twice per parameter) run on the host, no kernel, no sync."""
        tensors = [t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)]
        return bool(self.host) and bool(tensors) and all(t.dim() == 0 for t in tensors) \
            and any(_storage(t) in self.host for t in tensors)

    def collective(self, kind: str, t: torch.Tensor) -> None:
        """A collective as bench/distributed/comm.py counts it: issued here, its payload `t`."""
        t = local_shard(t)
        self.ops.append(Op(kind, 0, t.numel() * t.element_size(), False, _DTYPES.get(t.dtype, "fp32"), collective=kind))
        here = self.by_stage.setdefault(self.stage, {}).setdefault(kind, {"bytes": 0, "calls": 0})
        here["bytes"] += self.ops[-1].bytes
        here["calls"] += 1
        if kind == "allgather":  # its output is unsharded parameters: the kernel that reads it first waits
            key = _storage(t)
            if key is not None:
                self.gathered[key] = len(self.ops) - 1

    def barrier(self) -> None:
        self.ops.append(Op("wait_collectives", 0, 0, False, "fp32", barrier=True))

    def _waits(self, args) -> int | None:
        for t in args:
            if isinstance(t, torch.Tensor):
                i = self.gathered.pop(_storage(t), None)
                if i is not None:
                    return i
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if _fake_only(func, out) or func.namespace == "c10d":  # collectives: told by `collective`
            return out
        packet = func.overloadpacket
        count = flop_registry.get(packet) or _EXTRA.get(packet)
        flops = int(count(*args, **kwargs, out_val=out)) if count is not None else 0
        kernel = _launches(func) and not self._host_only((args, kwargs))
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        moved = kernel_bytes(tree_flatten((args, kwargs))[0], _written(func, args, kwargs, out)) if kernel else 0
        floating = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
        waits = self._waits(tree_flatten((args, kwargs))[0]) if kernel and self.gathered else None
        self.ops.append(Op(str(packet), flops, moved, kernel, _DTYPES.get(floating, "fp32"), waits=waits))
        return out


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@dataclass
class FakeStep:
    peak_bytes: int
    split: dict          # category -> bytes at the peak
    stages: dict         # forward | backward | optimizer -> {peak, batch_bytes: its activations and temporaries}
    saved_bytes: int     # saved for backward (counters.SavedTensors): a measured job's memory.activations_bytes
    flops: int
    ops: list[Op]
    params_total: int
    params_trainable: int
    weights_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    plan: object
    shape: object
    quant: object
    seconds: float       # how long the projection took on this machine
    world: int = 1       # data-parallel ranks; every figure above is rank 0's
    comm: dict = dataclasses.field(default_factory=dict)  # kind -> {bytes, calls} of the observed step
    comm_by_stage: dict = dataclasses.field(default_factory=dict)  # forward | backward | optimizer -> the same
    ddp_bucket_bytes: int = 0
    autograd_nodes: int = 0  # the backward's graph (autograd_nodes), spread over its operations' `nodes`
    # LiveMemory's allocations and frees (bench/project/memory.py), the first `before_step` made before the step
    events: list = dataclasses.field(default_factory=list)
    before_step: int = 0


def fake_step(cfg: BenchConfig, batch_size: int | None = None, memtracker: bool = False,
              foreach: bool = False, world: int = 1) -> FakeStep:
    """Build the job on fake tensors and run its steady-state step, observed. `memtracker`:
    PyTorch's MemTracker (FSDPMemTracker under FSDP) instead of LiveMemory (the tests hold them
    equal). `foreach`: a CUDA target's defaults: AdamW's multi-tensor implementation unless
    train.adamw_impl names another, clipping's too (on a CPU each loops over the tensors). `world` > 1:
    rank 0 of `world` data-parallel ranks (cfg.dist.mode, cfg.dist.shard; bench/project/parallel.py),
    each collective recorded where it is issued."""
    from bench.project import parallel

    if world == 1:
        return _fake_step(cfg, batch_size, memtracker, foreach, 1)
    with parallel.fake_world(world):
        return _fake_step(cfg, batch_size, memtracker, foreach, world)


def _peak(tracker, memtracker: bool, fsdp: bool) -> tuple[int, dict, dict]:
    """The step's peak, its split by category, and LiveMemory's per-stage peaks."""
    if memtracker:
        snap = next(iter(tracker.get_tracker_snapshot("peak").values()))
        split: dict = {}
        for k, v in (FSDP_SPLIT if fsdp else SPLIT).items():
            split[v] = split.get(v, 0) + int(snap.get(k, 0))
        return int(snap["Total"]), split, {}
    tracker.close()
    stages = {k: {"peak": v[0], "batch_bytes": v[1]["activations"] + v[1]["temporaries"]}
              for k, v in tracker.stages.items()}
    return tracker.peak, tracker.at_peak, stages


def _rank_states(model, optimizer) -> tuple[int, int, int]:
    """One rank's weights, gradients and optimizer state: a sharded tensor's own shard."""
    size = lambda t: local_shard(t).numel() * local_shard(t).element_size()  # noqa: E731
    weights = sum(counters.stored_bytes(local_shard(p)) for p in model.parameters())
    grads = sum(size(p) for p in model.parameters() if p.requires_grad)
    opt = sum(size(v) for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v))
    return weights, grads, opt


def _build(cfg: BenchConfig, dtype, world: int, counter, device_mesh, foreach: bool):
    """Inside the fake mode: the job as rank 0 builds it, wrapped, with AdamW's state made as a first
    step makes it. (Setup, Trainer, DDP's buckets or None, the batches.)"""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from bench.measure.trainer import Trainer
    from bench.models.setup import seed_everything, setup
    from bench.project import parallel

    cpu = torch.device("cpu")
    seed_everything(cfg.train.seed)
    with _default_dtype(dtype):
        s = setup(cfg, cpu, data_context=unset_fake_temporarily)
    if device_mesh is not None:
        from bench.distributed.wrap import wrap

        s.model = wrap(s.model, "fsdp", cpu, counter, world, mesh=device_mesh, zero2=cfg.dist.shard == "grad_op",
                       bf16=cfg.dist.mixed_precision == "bf16")
        s.model._get_fsdp_state()._lazy_init()  # as a first forward would: the root then keeps its gather
    buckets = parallel.DDPBuckets(s.model, counter, world) if world > 1 and device_mesh is None else None
    trainer = Trainer(s.model, cfg, s.adapters["B"])
    if foreach:  # a CUDA target: train.adamw_impl=default is foreach there
        if cfg.train.adamw_impl == "default":  # each group's own foreach wins over a constructor's (None: a CPU's loop)
            for group in trainer.optimizer.param_groups:
                group["foreach"] = True
        trainer.foreach = True  # gradient clipping's too (torch._foreach_norm, torch._foreach_mul_)
    batches = list(s.train_batches(cfg, 1))
    for p in trainer.params:  # AdamW's state, as a first step makes it
        p.grad = torch.zeros_like(p)
    trainer._update()
    return s, trainer, buckets, batches


def _tracker(model, optimizer, buckets, fsdp: bool, memtracker: bool, stack: contextlib.ExitStack):
    """The step's memory tracker: PyTorch's MemTracker, or LiveMemory with DDP's buckets and FSDP's storage."""
    from bench.project import parallel

    if memtracker:
        return (fsdp_memtracker if fsdp else _memtracker)(model, optimizer)
    tracker = LiveMemory(model, optimizer)
    if buckets is not None:  # DDP's bucket storage, held for the whole run
        tracker.hold(buckets.bytes, "other")
    if fsdp:
        stack.enter_context(parallel.fsdp_storage(tracker))
    return tracker


def _fake_step(cfg: BenchConfig, batch_size, memtracker: bool, foreach: bool, world: int) -> FakeStep:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.distributed.comm import CommCounter
    from bench.project import parallel

    t0 = time.perf_counter()
    if batch_size is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))
    dtype = torch.bfloat16 if cfg.project.dtype == "bf16" else torch.float32
    fsdp = world > 1 and cfg.dist.mode == "fsdp"
    device_mesh = parallel.mesh(world) if fsdp else None
    counter, recorder = CommCounter(), OpRecorder()
    with FakeTensorMode(allow_non_fake_inputs=True), contextlib.ExitStack() as stack:
        s, trainer, buckets, batches = _build(cfg, dtype, world, counter, device_mesh, foreach)
        if foreach and cfg.train.adamw_impl != "fused":  # a CUDA target: unfused, the step counts stay on its host
            recorder.host = {_storage(st["step"]) for st in trainer.optimizer.state.values() if "step" in st}
        tracker = _tracker(s.model, trainer.optimizer, buckets, fsdp, memtracker, stack)
        counter.listener = recorder.collective
        # saved for backward, as a measured job counts it; FSDP's gathered weights are parameters
        gathered = (lambda ptr: tracker.live.get(ptr, (0, ""))[1] == "parameters") if fsdp and not memtracker else None
        saved = counters.SavedTensors(s.model, keep=False, is_param=gathered)
        with tracker, recorder:
            with saved.active():
                loss = trainer.loss(batches[0][0])
            tracker.phase, tracker.stage = "temporaries", "backward"  # LiveMemory's; MemTracker tells them itself
            recorder.stage = "backward"
            nodes, first = autograd_nodes(loss), len(recorder.ops)
            loss.backward()
            spread_nodes(recorder.ops[first:], nodes)
            if buckets is not None:
                buckets.finish()
            if world > 1:  # DDP's and FSDP's backward ends waiting for their collectives
                recorder.barrier()
            if not memtracker:
                tracker.settle_grads(trainer.params)
            tracker.stage = recorder.stage = "optimizer"
            trainer._update()
        # the step's allocations and frees end here: what the model and optimizer free as they are collected is not the step's
        events = list(getattr(tracker, "events", []))
        counter.listener = None
        if buckets is not None:
            buckets.close()
        peak, split, stages = _peak(tracker, memtracker, fsdp)
        params = counters.param_counts(s.model)
        weights, grads, opt = _rank_states(s.model, trainer.optimizer)
    return FakeStep(peak_bytes=peak, split=split, stages=stages, saved_bytes=saved.bytes,
                    flops=sum(op.flops for op in recorder.ops), ops=recorder.ops, params_total=params["total"],
                    params_trainable=params["trainable"], weights_bytes=weights, grads_bytes=grads,
                    optimizer_bytes=opt, plan=s.plan, shape=s.shape, quant=s.quant,
                    seconds=time.perf_counter() - t0, world=world,
                    comm={k: {"bytes": counter.bytes[k], "calls": counter.calls[k]} for k in counter.bytes},
                    comm_by_stage=recorder.by_stage,
                    ddp_bucket_bytes=buckets.bytes if buckets is not None else 0,
                    events=events, before_step=getattr(tracker, "before_step", 0), autograd_nodes=nodes)
