"""Counted work against closed forms (FACTS.md's cost rules)."""
import pytest
import torch

from bench.counters import StepCounts, optimizer_state_bytes
from bench.model import Transformer
from bench.strategies import apply_strategy, get_strategy
from bench.timer import StepTimer
from bench.train import Trainer

# A model where attention is a small share of the FLOPs: short sequences, wide layers.
SMALL_ATTN = ["model.dim=256", "model.n_heads=4", "model.n_kv_heads=2", "model.vocab_size=512",
              "train.seq_len=8", "train.batch_size=4"]


def _setup(cfg_of, *overrides):
    cfg = cfg_of(*overrides)
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    apply_strategy(model, get_strategy(cfg.strategy.name), cfg.lora)
    trainer = Trainer(model, cfg, torch.device("cpu"))
    batch = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.train.seq_len + 1))
    return cfg, model, trainer, batch


def _counted_step(cfg_of, *overrides):
    cfg, model, trainer, batch = _setup(cfg_of, *overrides)
    with StepCounts(model) as probe:
        trainer.step([batch], StepTimer(torch.device("cpu"), phases=False), probe)
    return cfg, probe


def rule_flops(m, strategy: str, rank: int, tokens: int) -> float:
    """Training FLOPs of the linear layers by FACTS.md's rules.

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


@pytest.mark.parametrize("strategy", ["full", "lora_all", "lora_last"])
def test_counted_flops_follow_the_cost_rules(cfg_of, strategy):
    cfg, probe = _counted_step(cfg_of, f"strategy={strategy}", "lora.rank=8", *SMALL_ATTN)
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


def test_frozen_parameters_end_the_step_without_gradients(cfg_of):
    cfg, model, trainer, batch = _setup(cfg_of, "strategy=lora_qk", "train.grad_clip=0")
    trainer.optimizer.step = lambda: None          # keep the gradients to look at them
    trainer.optimizer.zero_grad = lambda set_to_none=True: None
    trainer.step([batch], StepTimer(torch.device("cpu")))
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name


def test_ops_and_saved_activations_tell_strategies_apart(cfg_of):
    counts = {s: _counted_step(cfg_of, f"strategy={s}")[1] for s in ("full", "lora_all", "lora_last")}
    # Every adapter adds kernels: all-linear LoRA dispatches more ops forward+backward than full.
    assert counts["lora_all"].ops > counts["full"].ops
    # lora_last needs no activations of the blocks for backward.
    assert counts["lora_last"].saved.bytes < counts["full"].saved.bytes / 4
    dropped = _counted_step(cfg_of, "strategy=lora_all", "lora.dropout=0.1")[1]
    assert dropped.saved.bytes > counts["lora_all"].saved.bytes  # dropout's masks and copies


def test_grad_accumulation_equals_one_big_batch(cfg_of):
    """Two micro-batches of b, loss scaled by 1/2, give the update of one batch of 2b."""
    results = []
    for accum in (1, 2):
        cfg, model, trainer, _ = _setup(cfg_of, "strategy=lora_qk", "train.batch_size=4", f"train.grad_accum={accum}")
        torch.manual_seed(1)
        big = torch.randint(0, cfg.model.vocab_size, (4, cfg.train.seq_len + 1))
        micro = [big] if accum == 1 else list(big.split(2))
        timer = StepTimer(torch.device("cpu"))
        loss = trainer.step(micro, timer)
        results.append((loss, [p.detach().clone() for p in trainer.params], trainer.last_timings))
    (l1, p1, _), (l2, p2, timings) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert {"forward_ms", "backward_ms", "optimizer_ms"} <= set(timings)
