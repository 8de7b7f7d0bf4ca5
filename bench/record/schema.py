"""The job record (metrics.json), as typed sections.

One record per job, whatever happened to it. `Record.to_json()` writes it, `Record.from_json()` reads it back
with every field checked against its type, so the analysis reads attributes, never `.get(...)` with a silent
default. Schema 1 records are upgraded on read; an unknown schema is refused in one line. Plain Python on
purpose: the analysis side imports it, and must not reach torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from bench.record.decode import RecordError, decode as _decode
from bench.record.schema1 import upgrade_1

SCHEMA = 2  # bench/record/schema1.py upgrades schema 1 to this
STATUSES = ("ok", "invalid", "oom", "diverged", "interrupted", "error", "duplicate")


@dataclass
class Identity:
    """What a job is, in the terms the report groups and labels by."""
    config_key: str
    strategy: Optional[str] = None
    rank: Optional[int] = None           # None where the strategy uses no LoRA
    model: Optional[str] = None
    backend: Optional[str] = None        # None where the strategy uses no LoRA
    include_head: Optional[bool] = None  # None where the strategy ignores lora.include_head
    repeat: Optional[int] = None
    started: Optional[str] = None
    overrides: Optional[list[str]] = None  # the command-line overrides that made this job (Hydra's)


@dataclass
class Outcome:
    """Why a job did not end ok (or, for `duplicate`, where its measurement is)."""
    reason: Optional[str] = None
    key: Optional[str] = None               # invalid: the config key at fault
    failed_step: Optional[int] = None       # oom, diverged
    last_finite_loss: Optional[float] = None
    oom_where: Optional[str] = None         # cuda | host
    traceback: Optional[list[str]] = None   # error: the last frames
    same_as: Optional[str] = None           # duplicate: the job directory that measured it


@dataclass
class Env:
    torch: str
    python: str
    device: str
    device_name: str
    cuda: Optional[str]
    cpu: str
    cpu_count: Optional[int]
    threads: int
    hostname: str
    git_commit: Optional[str]
    machine: str  # the label reports group by: a comparison is fair only on one machine


@dataclass
class Plan:
    """What the strategy did to the model: the facts the analysis needs, so it never reads the table."""
    strategy: str
    uses_lora: bool
    backward_stops_early: bool  # nothing in the first block trains: backward ends before the input
    lora_scale: Optional[float]
    adapted: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoint: Optional[str] = None  # the base weights the job started from


@dataclass
class ModelShape:
    dim: Optional[int]
    n_layers: Optional[int]
    hidden: Optional[int]
    vocab_size: Optional[int]
    max_seq_len: Optional[int]


@dataclass
class Params:
    total: int
    trainable: int


@dataclass
class Work:
    """Counted on one untimed step in steady state (after the optimizer created its state)."""
    tokens_per_step: int
    flops_per_step: Optional[int] = None
    ops_per_step: Optional[int] = None
    counted_step: Optional[int] = None
    # "aten": aten operations dispatched (eager). "profiled": torch.compile's profiled top-level operations, compiled
    # graphs among them. "aten_captured": the eager step's aten operations, all replayed by one CUDA-graph launch.
    ops_kind: str = "aten"


@dataclass
class Memory:
    weights_bytes: Optional[int] = None
    grads_bytes: Optional[int] = None
    optimizer_state_bytes: Optional[int] = None
    activations_bytes: Optional[int] = None
    device_peak_allocated_bytes: Optional[int] = None
    device_peak_reserved_bytes: Optional[int] = None
    nvml_used_bytes: Optional[int] = None
    host_peak_rss_bytes: Optional[int] = None
    host_peak_since_reset: Optional[bool] = None


@dataclass
class Stats:
    median: Optional[float] = None
    mean: Optional[float] = None
    p10: Optional[float] = None
    p90: Optional[float] = None
    std: Optional[float] = None


@dataclass
class Time:
    """`train_s` is the training clock: the wall time of every step from `loss.eval_start` on (warm-up and timed
    steps); loss rates, `elapsed_s` and `to_target_s` use it. `timed_s`: the timed steps', behind `step_ms`."""
    wall_s: Optional[float] = None
    train_s: Optional[float] = None
    timed_s: Optional[float] = None
    timed_steps: int = 0
    tokens_per_s: Optional[float] = None
    step_ms: Stats = field(default_factory=Stats)
    forward_ms: Stats = field(default_factory=Stats)
    backward_ms: Stats = field(default_factory=Stats)
    optimizer_ms: Stats = field(default_factory=Stats)
    to_target_s: Optional[float] = None
    steps_to_target: Optional[int] = None
    sync: Optional[str] = None  # "step" (a host sync at both borders of every step) or "window:N" (CUDA)
    compile_s: Optional[float] = None  # train.compile / cuda_graphs: compiling or capturing, off every clock


@dataclass
class Paired:
    """Steps in turn with full fine-tuning's (bench/measure/paired.py), rows `paired`; `skipped`: why not."""
    baseline: str = "full"
    pairs: int = 0
    ratio: Optional[float] = None  # median over pairs of own / baseline step time
    own_ms: Stats = field(default_factory=Stats)
    base_ms: Stats = field(default_factory=Stats)
    order: str = "ABBA"            # who goes first alternates, pair by pair
    skipped: Optional[str] = None


@dataclass
class Loss:
    floor: Optional[float] = None
    first: Optional[float] = None       # training loss of the first step
    last: Optional[float] = None        # training loss of the last step
    eval_start: Optional[float] = None  # when the training clock starts
    eval_end: Optional[float] = None
    eval_noise: Optional[float] = None  # standard error of eval_end over the held-out batches


@dataclass
class Stability:
    """Was the machine quiet while the job was timed (bench/measure/stability.py)? Unstable: in no verdict."""
    unstable: bool
    reason: Optional[str] = None
    steps: int = 0
    wait_fraction: Optional[float] = None  # run-queue wait of this process's threads per wall second
    cpu_per_wall: Optional[float] = None   # CPU seconds of this process's threads per wall second
    drift: Optional[float] = None          # median(last third of steps) / median(first third) - 1
    spread: Optional[float] = None         # p90 / p10 of the timed steps
    gpu_other_processes: Optional[int] = None
    gpu_utilization: Optional[float] = None
    remeasured: list[str] = field(default_factory=list)  # why earlier attempts were set aside (remeasure)


@dataclass
class Quant:
    """quant.base: the frozen base stored quantized (bench/models/quant.py)."""
    scheme: str                 # nf4
    library: str                # torchao (native backend) | bitsandbytes (peft backend)
    scope: str                  # adapted | frozen
    layers: list[str]           # the quantized linears
    block_size: int
    scaler_block_size: Optional[int]  # torchao's second-level blocks; None where the library fixes its own
    bytes_before: int           # the dense weights these layers held
    bytes_after: int            # what they hold quantized: codes and scales (memory.weights_bytes counts these)
    adapted: int = 0            # how many of them carry an adapter


@dataclass
class DeviceProjection:
    """One device's projection of the job's fake step (bench/project/timeline.py). Projected, never measured."""
    device: str
    source: str                 # where the device's figures come from
    memory_bytes: int           # the device's memory
    reserved_bytes: int         # what the caching allocator holds, replayed (bench/project/allocator.py)
    fits: bool
    largest_batch: Optional[int]  # the largest batch whose reserve fits, from the per-sample slope
    step_ms: float
    host_ms: float
    busy_ms: float
    compute_ms: float
    memory_ms: float
    idle_fraction: float
    bound: str                  # device | host | communication: the largest part of the step
    kernels: int
    host_op_us: float           # the host's cost per operation (Projection.host_calibration says whence)
    launch_us: float            # a kernel launch's, on top
    host_node_us: Optional[float] = None     # autograd's per node of the step's graph (Projection.autograd_nodes)
    host_wait_ms: Optional[float] = None     # the step's parts: compute (busy_ms), waiting for the host, or
    exposed_comm_ms: Optional[float] = None  # for a collective
    comm_ms: Optional[float] = None          # the link busy (overlapped or not), and per kind of collective
    comm_ms_by_kind: dict = field(default_factory=dict)
    link: Optional[str] = None               # what the ranks' ring crosses (bench/project/links.py), and whence
    link_source: Optional[str] = None
    alloc_retries: Optional[int] = None      # per step: the allocator out of room, its cache returned, retried


@dataclass
class Projection:
    """A projected job: the step ran on fake tensors (bench/project/fake.py), nothing was timed."""
    dtype: str                  # fp32 | bf16: how the parameters are stored
    peak_bytes: int             # MemTracker's peak of the steady-state step
    split: dict                 # parameters, buffers, gradients, optimizer, activations, temporaries, other
    per_sample_bytes: Optional[int]  # the forward or backward peak's growth per sample of batch
    flops_per_step: int
    ops_per_step: int
    weights_bytes: int
    grads_bytes: int
    optimizer_state_bytes: int
    activations_bytes: int      # saved for backward, counted as a measured job counts it
    host_calibration: str       # where the host's per-operation cost comes from
    seconds: float              # how long the projection took here
    devices: list[DeviceProjection] = field(default_factory=list)
    stages: dict = field(default_factory=dict)  # forward | backward | optimizer -> {peak, batch_bytes}
    ranks: int = 1              # data-parallel ranks; every byte figure above is one rank's (rank 0)
    mode: Optional[str] = None  # ddp | fsdp; shard: full (ZeRO-3) | grad_op (ZeRO-2); nodes: machines
    shard: Optional[str] = None
    nodes: int = 1
    autograd_nodes: Optional[int] = None  # the graph the step's backward runs (None: projected before it was counted)
    collectives: dict = field(default_factory=dict)  # kind -> {bytes, calls}: one rank's payloads per step;
    collectives_by_stage: dict = field(default_factory=dict)  # and where issued: forward | backward | optimizer
    ddp_bucket_bytes: int = 0   # DDP's gradient buckets, held beside the gradients (in the peak's `other`)
    mean_seq_len: Optional[int] = None  # timed (FLOPs, operations) at this mean length; memory at the longest
    train_tokens: Optional[float] = None  # the report's "time to train N tokens"


@dataclass
class Attribution:
    """One untimed profiled step by category (bench/measure/attribution.py): all but gpu_idle (device time) add to step_ms."""
    step_ms: float
    categories: dict
    ops: dict
    kernels: Optional[int] = None
    rest_ops: dict = field(default_factory=dict)  # norm_activation_other's largest operations, ms


@dataclass
class Compile:
    """What ran compiled or captured (bench/measure/compiled.py, bench/measure/graphs.py)."""
    mode: str                                  # torch.compile | cuda_graphs
    what: str
    graphs: Optional[int] = None               # graphs compiled (a break or a recompile adds one)
    graph_breaks: Optional[int] = None
    break_reasons: list[str] = field(default_factory=list)
    recompiles_on_clock: Optional[int] = None  # compiled after the untimed steps: should be 0
    compiler_s: Optional[float] = None         # the compiler's own total of its time
    cache_hits: Optional[int] = None           # graphs taken from Inductor's on-disk cache


@dataclass
class RankFigures:
    rank: int
    step_ms: Optional[float] = None                     # this rank's median timed step
    device_peak_allocated_bytes: Optional[int] = None
    host_peak_rss_bytes: Optional[int] = None
    wait_fraction: Optional[float] = None                # run-queue wait: the sibling ranks count too


@dataclass
class Dist:
    """dist.nproc > 1: the job ran on `world_size` ranks (bench/distributed/launch.py). time.step_ms is
    the slowest rank's per step; memory is rank 0's, every rank's peak is in `ranks`."""
    world_size: int
    mode: str     # ddp | fsdp
    backend: str  # gloo | nccl
    ranks: list[RankFigures] = field(default_factory=list)


@dataclass
class Comm:
    """Collectives of one timed step, counted where they ran (bench/distributed/comm.py): the payload
    handed to each kind, and how many calls. comm_ms: time the training thread spent blocked in
    communication on the profiled step (bench/measure/attribution.py, category communication)."""
    allreduce_bytes_per_step: int = 0
    allgather_bytes_per_step: int = 0
    reducescatter_bytes_per_step: int = 0
    allreduce_calls_per_step: float = 0.0
    allgather_calls_per_step: float = 0.0
    reducescatter_calls_per_step: float = 0.0
    comm_ms: Optional[float] = None


@dataclass
class Probe:
    """One batch size tried by the memory-budget search; its own record is at `path`."""
    batch_size: int
    status: str
    path: str
    fits: bool = False                    # ok, and its recorded peak within the budget
    peak_bytes: Optional[int] = None      # device peak allocated (CUDA) or host peak RSS (CPU)
    tokens_per_s: Optional[float] = None
    step_ms: Optional[float] = None


@dataclass
class Search:
    """search.batch: the largest batch within the budget (bench/search.py). This job's other
    sections are the record of the probe at `best_batch`."""
    budget_gb: float
    best_batch: Optional[int]  # None: not even batch 1 fitted
    stopped_by: str            # fitted max_batch | bracketed (an oom above best_batch) | max_probes
    probes: list[Probe] = field(default_factory=list)


@dataclass
class EvalPoint:
    step: int
    elapsed_s: float
    eval_loss: Optional[float]  # null where the loss was not finite


@dataclass
class Calibration:
    matmul_flops_per_s: float
    op_overhead_s: float
    matmul_shape: list[int]
    precision: str
    node_overhead_s: Optional[float] = None  # autograd's cost per node (None: measured before it was)


@dataclass
class Record:
    status: str
    identity: Identity
    config: dict
    schema: int = SCHEMA
    outcome: Optional[Outcome] = None
    env: Optional[Env] = None
    plan: Optional[Plan] = None
    model_shape: Optional[ModelShape] = None
    params: Optional[Params] = None
    work: Optional[Work] = None
    memory: Optional[Memory] = None
    time: Optional[Time] = None
    paired: Optional[Paired] = None
    loss: Optional[Loss] = None
    eval_curve: list[EvalPoint] = field(default_factory=list)
    calibration: Optional[Calibration] = None
    stability: Optional[Stability] = None
    attribution: Optional[Attribution] = None
    compile: Optional[Compile] = None
    search: Optional[Search] = None
    dist: Optional[Dist] = None
    comm: Optional[Comm] = None
    quant: Optional[Quant] = None
    projection: Optional[Projection] = None
    kind: str = "measured"  # measured | projected (bench/project/): a projected record is in no measured verdict
    pretrain: Optional[dict] = None  # the base model's own record, when this job's pretraining ran

    # What a job measured, as opposed to what it is (identity, config) and how it ended.
    MEASURED = ("env", "plan", "model_shape", "params", "work", "memory", "time", "paired", "loss", "eval_curve",
                "calibration", "stability", "attribution", "compile", "comm", "quant")

    def take_measurements(self, other: "Record") -> None:
        """This record's measured sections become `other`'s (a search's best probe, a job's rank 0)."""
        for name in self.MEASURED:
            setattr(self, name, getattr(other, name))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, node: Any) -> "Record":
        """A typed record from parsed JSON; RecordError (one line) if it is not one."""
        if not isinstance(node, dict):
            raise RecordError("not a JSON object")
        schema = node.get("schema")
        if schema == 1:
            node = upgrade_1(node)
        elif schema != SCHEMA:
            raise RecordError(f"schema {schema!r} is not one this version reads (1 or {SCHEMA})")
        rec = _decode(cls, node, "")
        if rec.status not in STATUSES:
            raise RecordError(f"status: {rec.status!r} is not one of {', '.join(STATUSES)}")
        return rec
