"""The table of strategies: which linear layers get adapters, and what is trained.

A strategy names *roles* (q, k, v, o, gate, up, down, head); ROLE_NAMES maps each role to the
module names of every architecture we know (native MiniMind names first, Hugging Face Llama
names second), so one table serves every model.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from bench.models.lora import LoRALinear, adapter_params
from bench.models.lora_fused import FusedLoRALinear, share_input
from bench.config import ConfigError, LoraConfig
from bench.record.schema import Plan

ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "q": ("wq", "q_proj"),
    "k": ("wk", "k_proj"),
    "v": ("wv", "v_proj"),
    "o": ("wo", "o_proj"),
    "gate": ("w1", "gate_proj"),
    "up": ("w3", "up_proj"),
    "down": ("w2", "down_proj"),
    "head": ("output", "lm_head"),
}
BLOCK_ROLES = ("q", "k", "v", "o", "gate", "up", "down")
# Roles whose layers read the same input in every architecture we know: a fused layer computes
# them as one node (bench/models/lora_fused.py: share_input).
SHARED_INPUT_ROLES = (("q", "k", "v"), ("gate", "up"))


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    adapt: tuple[str, ...] = ()      # roles that get a LoRA adapter
    train: tuple[str, ...] = ()      # roles trained at full rank, everything else frozen
    train_all: bool = False          # full fine-tuning
    square_only: bool = False        # keep only targets whose weight is square
    head_optional: bool = False      # lora.include_head adds the head to the adapted roles
    train_blocks: bool = False       # every parameter of the blocks lora.layers names trained, the rest frozen

    @property
    def uses_lora(self) -> bool:
        return bool(self.adapt)

    def ignored_keys(self) -> set[tuple[str, ...]]:
        """Config keys this strategy does not read: two jobs that differ only there measure the same."""
        if self.train_blocks:  # reads lora.layers only
            import dataclasses

            return {("lora", f.name) for f in dataclasses.fields(LoraConfig) if f.name != "layers"}
        if not self.uses_lora:
            return {("lora",)}
        return set() if self.head_optional else {("lora", "include_head")}

    def reads(self, key: tuple[str, ...]) -> bool:
        """Whether this strategy reads config key `key` (a path such as ("lora", "rank"))."""
        return not any(key[:len(ignored)] == ignored for ignored in self.ignored_keys())


STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy("full", "every parameter trainable", train_all=True),
    Strategy("lora_all", "LoRA on every linear layer of the blocks (lora.include_head adds the head)",
             adapt=BLOCK_ROLES, head_optional=True),
    Strategy("lora_qk", "LoRA on the query and key projections", adapt=("q", "k")),
    Strategy("lora_qv", "LoRA on the query and value projections (PEFT's Llama default)", adapt=("q", "v")),
    Strategy("lora_attn", "LoRA on q, k, v and o", adapt=("q", "k", "v", "o")),
    Strategy("lora_ffn", "LoRA on the FFN's gate, up and down projections", adapt=("gate", "up", "down")),
    Strategy("lora_square", "LoRA on every linear layer whose weight is square (MiniMind's model_lora.py)",
             adapt=BLOCK_ROLES + ("head",), square_only=True),
    Strategy("lora_last", "LoRA on the model's last linear layer (the output head)", adapt=("head",)),
    Strategy("head_only", "no LoRA: the output head trained at full rank, the rest frozen", train=("head",)),
    Strategy("freeze", "no LoRA: the blocks lora.layers names trained whole, the rest frozen (LlamaFactory's "
                       "finetuning_type=freeze; lora.layers=[-3,-2,-1]: its last 3 layers)", train_blocks=True),
]}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError("strategy", f"{name!r} is not one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def _role_of(module_name: str) -> str | None:
    leaf = module_name.rsplit(".", 1)[-1]
    for role, names in ROLE_NAMES.items():
        if leaf in names:
            return role
    return None


_BLOCK_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _block_of(module_name: str) -> int | None:
    m = _BLOCK_INDEX.search(module_name)
    return int(m.group(1)) if m else None


def _n_blocks(model: nn.Module) -> int:
    indices = [_block_of(n) for n, _ in model.named_modules()]
    return 1 + max((i for i in indices if i is not None), default=-1)


def shared_input_groups(names: list[str]) -> list[list[str]]:
    """The adapted layers that read the same input: same parent module, roles in one set of
    SHARED_INPUT_ROLES (q, k, v of one attention; gate and up of one FFN)."""
    groups: dict[tuple[str, int], list[str]] = {}
    for name in names:
        for i, roles in enumerate(SHARED_INPUT_ROLES):
            if _role_of(name) in roles:
                groups.setdefault((name.rpartition(".")[0], i), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def select_targets(model: nn.Module, strategy: Strategy, lora: LoraConfig) -> list[str]:
    """Names of the nn.Linear modules that get adapters; ConfigError when the choice is empty or off."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if lora.targets is not None:
        key = "lora.targets"
        chosen = [n for n, _ in linears
                  if any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n.rsplit(".", 1)[-1], p)
                         for p in lora.targets)]
    else:
        key = "strategy"
        roles = set(strategy.adapt) | ({"head"} if lora.include_head and strategy.head_optional else set())
        chosen = [n for n, _ in linears if _role_of(n) in roles]
    if strategy.square_only:
        shapes = dict(linears)
        chosen = [n for n in chosen if shapes[n].in_features == shapes[n].out_features]
    if lora.layers is not None:
        depth = _n_blocks(model)
        bad = [i for i in lora.layers if not -depth <= i < depth]
        if bad:
            raise ConfigError("lora.layers", f"{bad} is outside the model's {depth} blocks (allowed: {-depth}..{depth - 1})")
        keep = {i % depth for i in lora.layers}
        blockwise = [n for n in chosen if _block_of(n) is not None]
        if not blockwise:
            raise ConfigError("lora.layers", f"strategy={strategy.name} adapts no block-level layer, so lora.layers selects nothing")
        chosen = [n for n in chosen if _block_of(n) is None or _block_of(n) in keep]
    if not chosen:
        what = f"lora.targets={lora.targets}" if lora.targets is not None else f"strategy={strategy.name}"
        raise ConfigError(key, f"{what} matches no linear layer of this model")
    return chosen


def check_rank(model: nn.Module, targets: list[str], rank: int) -> None:
    """A rank above a target's min(in, out) is no low-rank update: refuse it, naming the layer."""
    for name in targets:
        base = model.get_submodule(name)
        if rank > min(base.in_features, base.out_features):
            raise ConfigError("lora.rank", f"{rank} exceeds min(in, out)={min(base.in_features, base.out_features)} "
                                           f"of {name} ({base.in_features}->{base.out_features})")


def make_plan(strategy: Strategy, lora: LoraConfig, adapted: list[str], trained: list[str],
              notes: list[str] | None = None) -> Plan:
    """The record's view of what was done. Backward stops early when no module of the first
    block is adapted or trained (full fine-tuning trains the embedding, so never)."""
    first_block = [n for n in adapted + trained if _block_of(n) == 0]
    return Plan(strategy=strategy.name, uses_lora=strategy.uses_lora,
                backward_stops_early=not strategy.train_all and not first_block,
                lora_scale=lora.scale if strategy.uses_lora else None,
                adapted=list(adapted), trained=list(trained), notes=list(notes or []))


def set_trainable(model: nn.Module, trainable: list[nn.Parameter] | None) -> None:
    """The one place that decides requires_grad: these parameters train (None: all), the rest freeze."""
    keep = None if trainable is None else {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(keep is None or id(p) in keep)


def apply_strategy(model: nn.Module, strategy: Strategy, lora: LoraConfig) -> Plan:
    """Wrap the targets in LoRA layers and set what trains, in place, as `strategy` says."""
    if strategy.train_all:
        set_trainable(model, None)
        return make_plan(strategy, lora, [], ["*"])
    if strategy.train_blocks:
        depth = _n_blocks(model)
        if lora.layers is None or any(not -depth <= i < depth for i in lora.layers):
            raise ConfigError("lora.layers", f"strategy=freeze trains the blocks lora.layers names, of the model's "
                                             f"{depth} (e.g. lora.layers=[-3,-2,-1]); got {lora.layers}")
        keep = {i % depth for i in lora.layers}
        set_trainable(model, [p for n, p in model.named_parameters() if _block_of(n) in keep])
        trained = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _block_of(n) in keep]
        return make_plan(strategy, lora, [], trained)
    adapted = []
    if strategy.uses_lora:
        adapted = select_targets(model, strategy, lora)
        check_rank(model, adapted, lora.rank)
        layer = FusedLoRALinear if lora.impl == "fused" else LoRALinear
        for name in adapted:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            extra = {"dora": True} if lora.dora else {}  # config refuses DoRA and fp32 adapters on the fused layer
            if lora.adapter_dtype == "fp32":
                extra["adapter_dtype"] = torch.float32
            setattr(parent, child, layer(getattr(parent, child), lora.rank, lora.scale,
                                         lora.dropout, lora.init, lora.init_std, **extra))
    trained = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _role_of(n) in strategy.train]
    roles = adapter_params(model)
    set_trainable(model, roles["A"] + roles["B"] + roles["M"] + [model.get_submodule(n).weight for n in trained])
    if trained and hasattr(model, "embedding_grad"):
        # The head is tied to the embedding: train only the head's use of the shared matrix.
        model.embedding_grad = False
    notes = []
    if lora.impl == "fused":  # after set_trainable: only layers with a frozen base share a node
        shared = [g for g in shared_input_groups(adapted) if share_input([model.get_submodule(n) for n in g])]
        if shared:
            notes.append(f"lora.impl=fused: {len(shared)} groups of layers that read the same input compute as "
                         f"one node each ({', '.join(n.rsplit('.', 1)[-1] for n in shared[0])}, ...)")
    return make_plan(strategy, lora, adapted, trained, notes)
