"""The validated configuration a job reads.

Hydra composes `conf/` into a DictConfig; `load_config` turns it into frozen dataclasses,
checking every key's presence and type and every value's range. Anything wrong raises
`ConfigError`, whose message is one line naming the key, the value and what is allowed.
Checks that need the built model (rank against a layer's width, `lora.layers` against the
depth) live where the model is known: bench/models/strategies.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from bench.coerce import ConfigError, build as _build, one_of as _one_of, positive as _positive

PRECISIONS, DEVICES, INITS, DATA_KINDS = ("fp32", "bf16", "fp16"), ("auto", "cpu", "cuda"), ("A", "B", "gaussian"), \
    ("random", "markov", "jsonl")
MODEL_KINDS, BACKENDS, IMPLS = ("native", "hf_llama", "hf"), ("native", "peft"), ("eager", "fused")
DIST_MODES, SHARDS = ("ddp", "fsdp"), ("full", "grad_op")
OUT_OF_SCOPE = {"tp": "tensor", "tensor": "tensor", "pp": "pipeline", "pipeline": "pipeline"}
QUANT_BASES, QUANT_SCOPES = ("none", "nf4"), ("adapted", "frozen")  # room for int8
CHECKPOINTING = ("none", "blocks", "selective", "selective_op")
ADAMW_IMPLS = ("default", "for-loop", "foreach", "fused")


@dataclass(frozen=True)
class ModelConfig:
    """Shapes are required for the models we build (native, hf_llama); a local Hugging Face
    checkpoint (kind=hf) brings its own, so there they may be null."""
    name: str
    kind: str
    path: Optional[str]
    dim: Optional[int]
    n_layers: Optional[int]
    n_heads: Optional[int]
    n_kv_heads: Optional[int]
    ffn_hidden: Optional[int]
    vocab_size: Optional[int]
    max_seq_len: Optional[int]
    rope_theta: Optional[float]
    norm_eps: Optional[float]
    checkpoint: Optional[str]
    tie_embeddings: bool  # the head shares the embedding's matrix (native models always do)

    @property
    def hidden(self) -> int | None:
        """FFN width; MiniMind's rule when not given: int(8*dim/3) rounded up to a multiple of 64."""
        if self.ffn_hidden is not None or self.dim is None:
            return self.ffn_hidden
        h = int(2 * 4 * self.dim / 3)
        return 64 * ((h + 63) // 64)

    @property
    def head_dim(self) -> int | None:
        return None if self.dim is None else self.dim // self.n_heads


@dataclass(frozen=True)
class StrategyConfig:
    name: str


@dataclass(frozen=True)
class DataConfig:
    name: str
    seed: int
    path: Optional[str]
    branching: Optional[int]
    shift: float


@dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: Optional[float]
    rslora: bool
    dropout: float
    init: str
    init_std: float
    include_head: bool
    layers: Optional[list[int]]
    targets: Optional[list[str]]
    lr_ratio: float
    backend: str
    impl: str
    dora: bool  # DoRA (Liu et al. 2024): a trained magnitude per output row, the direction normalised each step
    adapter_dtype: str  # base | fp32: native adapters in fp32 under a bf16 base (PEFT's autocast_adapter_dtype)

    @property
    def scale(self) -> float:
        alpha = float(self.rank) if self.alpha is None else self.alpha
        return alpha / (self.rank ** 0.5 if self.rslora else self.rank)


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    warmup_steps: int
    paired_steps: int
    batch_size: int
    seq_len: int
    lr: float
    weight_decay: float
    grad_accum: int
    grad_clip: float
    precision: str
    seed: int
    phases: bool
    profile: bool
    sync_every: int
    eval_batches: int
    progress: bool
    max_host_memory_gb: Optional[float]
    eval_every: int
    target_loss: Optional[float]
    compile: bool
    compile_cache: bool
    cuda_graphs: bool
    memory_budget_gb: Optional[float]
    checkpointing: str  # none | blocks | selective | selective_op (bench/models/recompute.py)
    adamw_impl: str     # default | for-loop | foreach | fused (bench/measure/trainer.py)


@dataclass(frozen=True)
class QuantConfig:
    """The frozen base stored quantized (QLoRA): bench/models/quant.py."""
    base: str               # none | nf4
    scope: str              # adapted: the base weights of the adapted layers | frozen: every frozen linear
    block_size: int         # weights per absmax scale (torchao and bitsandbytes: 64)
    scaler_block_size: Optional[int]  # scales per second-level scale; None: 256 halved until it divides


@dataclass(frozen=True)
class ProjectConfig:
    """project.gpu: the job runs on fake tensors and is priced for these devices (bench/project/)."""
    gpu: Optional[list[str]]      # the devices (project.gpu=H100 or project.gpu=[H100,L40S]); list: the known ones
    dtype: str                    # fp32 | bf16: how the parameters are stored
    host_op_us: Optional[float]   # the host's cost per operation; null: bench/project/job.py's GPU host constant
    host_node_us: Optional[float]  # its cost per autograd node of the backward; null: the same file's constant
    devices: int                  # data-parallel ranks (dist.mode: ddp | fsdp), one GPU each
    nodes: int                    # machines the ranks are split over, devices / nodes GPUs each
    link: Optional[str]           # the GPUs' link within a node (bench/project/links.py); null: the device's own
    network: str                  # the link between nodes
    mean_seq_len: Optional[int]   # lengths that vary: timed at this mean, sized at train.seq_len (bench/project/job.py)
    train_tokens: Optional[float]  # the report's time to train this many tokens


@dataclass(frozen=True)
class SearchConfig:
    batch: bool       # find the largest train.batch_size within train.memory_budget_gb (bench/search.py)
    max_batch: int
    max_probes: int


@dataclass(frozen=True)
class PretrainConfig:
    steps: int
    lr: float
    batch_size: int
    seq_len: int
    dir: str


@dataclass(frozen=True)
class PeftConfig:
    autocast_adapter_dtype: bool  # PEFT keeps adapters in fp32 under a bf16 base, and casts the input


@dataclass(frozen=True)
class DistConfig:
    nproc: int  # processes (ranks); > 1 starts them through torchrun (bench/distributed/launch.py)
    mode: str   # ddp | fsdp
    shard: str  # fsdp: full (ZeRO-3: parameters re-gathered for backward) | grad_op (ZeRO-2: kept from forward)
    mixed_precision: str  # fsdp: none | bf16 (fp32 parameters cast to bf16 to compute, gradients reduced in fp32)


@dataclass(frozen=True)
class BenchConfig:
    device: str
    repeat: int
    resume: bool
    remeasure: int
    model: ModelConfig
    strategy: StrategyConfig
    data: DataConfig
    lora: LoraConfig
    quant: QuantConfig
    train: TrainConfig
    pretrain: PretrainConfig
    peft: PeftConfig
    search: SearchConfig
    dist: DistConfig
    project: ProjectConfig


def _ranks() -> int:
    """${ranks:} in conf/parallel/: one rank per CUDA device present, or 2 on a machine without one."""
    import torch

    return torch.cuda.device_count() if torch.cuda.device_count() > 1 else 2


def register_resolvers() -> None:
    from omegaconf import OmegaConf
    OmegaConf.register_new_resolver("ranks", _ranks, replace=True)


def load_config(cfg: Any) -> BenchConfig:
    """Validate a composed Hydra config (DictConfig or plain mapping) into a BenchConfig."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        # Hydra's own node is not ours to validate; studies may add top-level keys for it.
        cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg.pop("hydra", None)
    project = cfg.get("project") if isinstance(cfg, Mapping) else None
    if isinstance(project, Mapping) and isinstance(project.get("gpu"), str):  # one device: a list of one
        cfg = {**cfg, "project": {**project, "gpu": [project["gpu"]]}}
    bench = _build(BenchConfig, cfg, "")
    _check_ranges(bench)
    return bench


def _check_ranges(c: BenchConfig) -> None:
    _one_of("device", c.device, DEVICES)
    _positive("repeat", c.repeat, allow_zero=True)
    _positive("remeasure", c.remeasure, allow_zero=True)

    m = c.model
    _one_of("model.kind", m.kind, MODEL_KINDS)
    _one_of("lora.backend", c.lora.backend, BACKENDS)
    _one_of("lora.impl", c.lora.impl, IMPLS)
    _one_of("lora.adapter_dtype", c.lora.adapter_dtype, ("base", "fp32"))
    if c.lora.adapter_dtype == "fp32" and (c.lora.impl, c.lora.backend) != ("eager", "native"):
        raise ConfigError("lora.adapter_dtype", "fp32 needs lora.backend=native and lora.impl=eager "
                                                "(PEFT's own switch: peft.autocast_adapter_dtype)")
    if c.lora.impl == "fused" and c.lora.backend == "peft":
        raise ConfigError("lora.impl", "fused is this project's own layer; PEFT brings its own (use lora.backend=native)")
    if m.kind == "native" and not m.tie_embeddings:
        raise ConfigError("model.tie_embeddings", "the native model always ties its head to the embedding "
                                                  "(model.kind=hf_llama builds an untied one)")
    if m.kind == "hf":
        if not m.path:
            raise ConfigError("model.path", "model=hf needs a local checkpoint directory: model.path=/path/to/model")
        if m.checkpoint:
            raise ConfigError("model.checkpoint", "model=hf loads its weights from model.path")
        _check_training(c)
        return
    for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len", "rope_theta", "norm_eps"):
        if getattr(m, name) is None:
            raise ConfigError(f"model.{name}", f"required for model.kind={m.kind}")
        _positive(f"model.{name}", getattr(m, name))
    if m.ffn_hidden is not None:
        _positive("model.ffn_hidden", m.ffn_hidden)
    if m.dim % m.n_heads:
        raise ConfigError("model.n_heads", f"{m.n_heads} does not divide model.dim={m.dim}")
    if m.n_heads % m.n_kv_heads:
        raise ConfigError("model.n_kv_heads", f"{m.n_kv_heads} does not divide model.n_heads={m.n_heads}")
    if m.head_dim % 2:
        raise ConfigError("model.n_heads", f"head dim {m.head_dim} must be even for RoPE")

    _check_training(c)


def _check_fixes(c: BenchConfig) -> None:
    """The ways of running a step (compile, CUDA graphs) and the memory-budget search."""
    t, s = c.train, c.search
    if t.memory_budget_gb is not None:
        _positive("train.memory_budget_gb", t.memory_budget_gb)
    if t.cuda_graphs and t.compile:
        raise ConfigError("train.cuda_graphs", "captures the eager step; with train.compile=true choose one of the two")
    if t.cuda_graphs and t.precision == "fp16":
        raise ConfigError("train.cuda_graphs", "fp16's grad scaler reads the device between steps; use bf16 or fp32")
    if s.batch and t.memory_budget_gb is None:
        raise ConfigError("search.batch", "the search needs a budget: train.memory_budget_gb=<GiB>")
    _positive("search.max_batch", s.max_batch)
    _positive("search.max_probes", s.max_probes)
    if s.batch and t.batch_size > s.max_batch:
        raise ConfigError("train.batch_size", f"the search starts at {t.batch_size}, above search.max_batch={s.max_batch}")


def _check_dist(c: BenchConfig) -> None:
    """Combinations a multi-process job cannot measure yet are refused here, each with its reason."""
    d, t = c.dist, c.train
    _positive("dist.nproc", d.nproc)
    if d.mode in OUT_OF_SCOPE:
        raise ConfigError("dist.mode", f"{OUT_OF_SCOPE[d.mode]} parallelism is out of scope: lora-bench measures and "
                                       "projects data parallelism only (ddp | fsdp)")
    _one_of("dist.mode", d.mode, DIST_MODES)
    _one_of("dist.shard", d.shard, SHARDS)
    if d.nproc == 1:
        return
    if t.grad_accum > 1:
        raise ConfigError("dist.nproc", "gradient accumulation across ranks is not measured yet (train.grad_accum=1)")
    if t.compile or t.cuda_graphs:
        raise ConfigError("dist.nproc", "compiled or captured steps are not measured across ranks yet")
    if c.search.batch:
        raise ConfigError("dist.nproc", "the memory-budget search runs one process")
    if t.precision == "fp16":
        raise ConfigError("dist.nproc", "fp16's grad scaler is not wired across ranks; use bf16 or fp32")


def _check_variants(c: BenchConfig) -> None:
    """QLoRA, DoRA and projection: what they cannot combine with, each refused with its reason. The checks that
    need the built model (a layer's size against the NF4 blocks) are in bench/models/quant.py."""
    q, r, t = c.quant, c.lora, c.train
    _one_of("quant.base", q.base, QUANT_BASES)
    _one_of("quant.scope", q.scope, QUANT_SCOPES)
    _positive("quant.block_size", q.block_size)
    _positive("quant.scaler_block_size", 1 if q.scaler_block_size is None else q.scaler_block_size)
    if q.base != "none":
        if c.strategy.name in ("full", "head_only"):
            raise ConfigError("quant.base", f"strategy={c.strategy.name} trains base weights, and a {q.base} weight "
                                            "cannot be trained (QLoRA quantizes only the frozen base)")
        if r.impl == "fused":
            raise ConfigError("lora.impl", "the fused layer multiplies a dense base weight; a quantized base "
                                           "runs with lora.impl=eager")
        if t.compile or t.cuda_graphs:
            raise ConfigError("quant.base", "a quantized base is measured eager only (train.compile and "
                                            "train.cuda_graphs off)")
        if c.dist.nproc > 1:
            raise ConfigError("quant.base", "a quantized base is not sharded or replicated across ranks yet "
                                            "(dist.nproc=1)")
        if q.block_size % 2:
            raise ConfigError("quant.block_size", f"must be even (two 4-bit codes per byte), got {q.block_size}")
    from bench.project.checks import check_project
    check_project(c)
    p = c.project
    if r.dora:
        if r.impl == "fused":
            raise ConfigError("lora.dora", "the fused layer has no DoRA path; DoRA runs with lora.impl=eager")
        if (c.dist.nproc > 1 or p.devices > 1) and c.dist.mode == "fsdp":
            raise ConfigError("lora.dora", "DoRA's weight norm reads the whole base weight, which FSDP shards "
                                           "(dist.mode=ddp)")


def _check_training(c: BenchConfig) -> None:
    m = c.model
    r = c.lora
    if r.rank < 1:
        raise ConfigError("lora.rank", f"must be >= 1, got {r.rank}")
    if r.alpha is not None:
        _positive("lora.alpha", r.alpha)
    if not 0.0 <= r.dropout < 1.0:
        raise ConfigError("lora.dropout", f"must be in [0, 1), got {r.dropout}")
    _one_of("lora.init", r.init, INITS)
    _positive("lora.init_std", r.init_std)
    if r.targets is not None and not r.targets:
        raise ConfigError("lora.targets", "an empty list matches nothing; use null for the strategy's targets")
    if r.layers is not None and not r.layers:
        raise ConfigError("lora.layers", "an empty list matches nothing; use null for every block")

    t = c.train
    _positive("train.steps", t.steps)
    _positive("train.warmup_steps", t.warmup_steps, allow_zero=True)
    _positive("train.paired_steps", t.paired_steps, allow_zero=True)
    _positive("train.batch_size", t.batch_size)
    _positive("train.seq_len", t.seq_len)
    if m.max_seq_len is not None and t.seq_len > m.max_seq_len:
        raise ConfigError("train.seq_len", f"{t.seq_len} exceeds model.max_seq_len={m.max_seq_len} of model={m.name}")
    _positive("train.lr", t.lr)
    _positive("train.weight_decay", t.weight_decay, allow_zero=True)
    _positive("train.grad_accum", t.grad_accum)
    _positive("train.grad_clip", t.grad_clip, allow_zero=True)
    _one_of("train.precision", t.precision, PRECISIONS)
    _positive("train.eval_batches", t.eval_batches)
    _positive("train.sync_every", t.sync_every)
    if t.max_host_memory_gb is not None:
        _positive("train.max_host_memory_gb", t.max_host_memory_gb)
    _positive("train.eval_every", t.eval_every, allow_zero=True)
    _positive("lora.lr_ratio", r.lr_ratio)
    _one_of("train.checkpointing", t.checkpointing, CHECKPOINTING)
    _one_of("train.adamw_impl", t.adamw_impl, ADAMW_IMPLS)
    _check_fixes(c)
    _check_dist(c)
    _check_variants(c)
    p = c.pretrain
    for name in ("steps", "lr", "batch_size", "seq_len"):
        _positive(f"pretrain.{name}", getattr(p, name))
    if m.max_seq_len is not None and p.seq_len > m.max_seq_len:
        raise ConfigError("pretrain.seq_len", f"{p.seq_len} exceeds model.max_seq_len={m.max_seq_len}")

    d = c.data
    _one_of("data.name", d.name, DATA_KINDS)
    if not 0.0 <= d.shift <= 1.0:
        raise ConfigError("data.shift", f"must be in [0, 1], got {d.shift}")
    if d.shift and d.name != "markov":
        raise ConfigError("data.shift", f"only the markov language can be shifted, not data={d.name}")
    if d.name == "markov":
        if d.branching is None or d.branching < 1 or (m.vocab_size is not None and d.branching > m.vocab_size):
            raise ConfigError("data.branching", f"must be in [1, vocab_size={m.vocab_size}], got {d.branching}")
    if d.name == "jsonl":
        if not d.path:
            raise ConfigError("data.path", "data=jsonl needs a file: data.path=/path/to/file.jsonl")
        if m.vocab_size is not None and m.vocab_size < 256:
            raise ConfigError("model.vocab_size", f"data=jsonl uses byte tokens and needs >= 256, got {m.vocab_size}")


register_resolvers()  # before any composed config is resolved: every entry point imports this module
