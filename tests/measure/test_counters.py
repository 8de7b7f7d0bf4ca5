"""Counted work against closed forms: the per-layer FLOP rules (2nm forward, 2nm for the input
gradient, 2nm for the weight gradient: Kaplan et al. 2020's 6N per token, per layer) and
AdamW's state (two moments per trainable parameter)."""
import pytest
import torch

from bench.measure.counters import StepCounts, optimizer_state_bytes
from bench.measure.timer import StepTimer
from tests.conftest import built, trainer_of

# A model where attention is a small share of the FLOPs: short sequences, wide layers.
SMALL_ATTN = ["model.dim=256", "model.n_heads=4", "model.n_kv_heads=2", "model.vocab_size=512",
              "train.seq_len=8", "train.batch_size=4"]


def _setup(cfg_of, *overrides):
    cfg, s = built(*overrides)
    batch = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.train.seq_len + 1))
    return cfg, s.model, trainer_of(cfg, s), batch


def _counted_step(cfg_of, *overrides):
    cfg, model, trainer, batch = _setup(cfg_of, *overrides)
    with StepCounts(model) as probe:
        trainer.step([batch], StepTimer(torch.device("cpu"), phases=False), probe)
    return cfg, probe


def rule_flops(m, strategy: str, rank: int, tokens: int) -> float:
    """Training FLOPs of the linear layers by the per-layer rules.

    A layer n->m costs 2nm forward, +2nm if its input needs a gradient, +2nm if its weight
    trains. An adapter costs 2r(n+m) forward and 2r(n+m) weight gradients, plus 2rm for B's
    input gradient and 2rn for A's only if the layer's input needs a gradient.
    """
    d, kv, h, v = m.dim, m.n_kv_heads * m.head_dim, m.hidden, m.vocab_size
    adapted = {"full": set(), "lora_all": {"q", "k", "v", "o", "gate", "up", "down"},
               "lora_last": {"head"}}[strategy]
    trains = strategy == "full"

    def layer(role, n, mm, needs_in):
        cost = 2 * n * mm + (2 * n * mm if needs_in else 0) + (2 * n * mm if trains else 0)
        if role in adapted:
            cost += 4 * rank * (n + mm) + 2 * rank * mm + (2 * rank * n if needs_in else 0)
        return cost, needs_in or trains or role in adapted

    total, x = 0, trains  # x: does the residual stream need a gradient?
    for _ in range(m.n_layers):
        outs = []
        for role, n, mm in (("q", d, d), ("k", d, kv), ("v", d, kv)):
            c, g = layer(role, n, mm, x)
            total += c
            outs.append(g)
        c, g = layer("o", d, d, any(outs))
        total += c
        x = x or g
        c1, g1 = layer("gate", d, h, x)
        c3, g3 = layer("up", d, h, x)
        c2, g2 = layer("down", h, d, g1 or g3)
        total += c1 + c2 + c3
        x = x or g2
    c, _ = layer("head", d, v, x)
    return (total + c) * tokens


@pytest.mark.parametrize("strategy,impl", [("full", "eager"), ("lora_all", "eager"), ("lora_last", "eager"),
                                           ("lora_all", "fused"), ("lora_last", "fused")])
def test_counted_flops_follow_the_cost_rules(cfg_of, strategy, impl):
    # The fused layer does the same products (its in-place addmm_ counted too), in one node.
    cfg, probe = _counted_step(cfg_of, f"strategy={strategy}", "lora.rank=8", f"lora.impl={impl}", *SMALL_ATTN)
    tokens = cfg.train.batch_size * cfg.train.seq_len
    expected = rule_flops(cfg.model, strategy, 8, tokens)
    assert probe.flops == pytest.approx(expected, rel=0.02)


def test_flop_ordering_and_lora_last_costs_about_a_forward(cfg_of):
    flops = {s: _counted_step(cfg_of, f"strategy={s}", "lora.rank=8", *SMALL_ATTN)[1].flops
             for s in ("full", "lora_all", "lora_last")}
    assert flops["full"] > flops["lora_all"] > flops["lora_last"]
    # All-linear LoRA saves at most about a third (the weight-gradient GEMMs).
    assert flops["lora_all"] / flops["full"] > 0.64
    # lora_last: the forward pass (a third of full training) plus a thin adapter.
    assert flops["lora_last"] / (flops["full"] / 3) == pytest.approx(1.0, abs=0.03)


def test_optimizer_state_is_eight_bytes_per_fp32_parameter_plus_steps(cfg_of):
    for strategy in ("full", "lora_qk", "head_only"):
        cfg, model, trainer, batch = _setup(cfg_of, f"strategy={strategy}")
        trainer.step([batch], StepTimer(torch.device("cpu")))
        trainable = [p for p in model.parameters() if p.requires_grad]
        n = sum(p.numel() for p in trainable)
        # exp_avg + exp_avg_sq in fp32, and one fp32 `step` scalar per parameter tensor.
        assert optimizer_state_bytes(trainer.optimizer) == 8 * n + 4 * len(trainable)


def test_ops_and_saved_activations_tell_strategies_apart(cfg_of):
    counts = {s: _counted_step(cfg_of, f"strategy={s}")[1] for s in ("full", "lora_all", "lora_last")}
    # Every adapter adds kernels: all-linear LoRA dispatches more ops forward+backward than full.
    assert counts["lora_all"].ops > counts["full"].ops
    # lora_last needs no activations of the blocks for backward.
    assert counts["lora_last"].saved.bytes < counts["full"].saved.bytes / 4
    dropped = _counted_step(cfg_of, "strategy=lora_all", "lora.dropout=0.1")[1]
    assert dropped.saved.bytes > counts["lora_all"].saved.bytes  # dropout's masks and copies


def test_steady_state_counts_leave_out_adamw_state_creation(cfg_of):
    """The first step creates AdamW's state (extra ops); later steps dispatch the same number."""
    cfg, model, trainer, batch = _setup(cfg_of, "strategy=lora_all")
    ops = []
    for _ in range(3):
        with StepCounts(model) as probe:
            trainer.step([batch], StepTimer(torch.device("cpu"), phases=False), probe)
        ops.append(probe.ops)
    assert ops[0] > ops[1] == ops[2]


def test_held_tensors_count_once_and_only_while_a_counter_is_active():
    from bench.measure.counters import SavedTensors, hold

    model = torch.nn.Linear(4, 4)
    x = torch.zeros(8, 4)
    hold([x])  # no counter active: nothing happens
    saved = SavedTensors(model)
    with saved.active():
        hold([x, x, x[:2]])  # one storage
        hold([model.weight])  # a parameter is a weight, not an activation
    assert saved.bytes == 8 * 4 * 4
    hold([torch.zeros(100)])
    assert saved.bytes == 8 * 4 * 4


def test_stored_bytes_of_plain_tensors_are_their_nbytes():
    from bench.measure.counters import stored_bytes

    t = torch.zeros(3, 5, dtype=torch.bfloat16)
    assert stored_bytes(t) == 30 and stored_bytes(torch.nn.Parameter(torch.zeros(7))) == 28
