"""The trainer's step: one optimizer update, its loss and its timings."""
import pytest
import torch

from bench.measure.timer import StepTimer
from tests.conftest import built, trainer_of

CPU = torch.device("cpu")


def _batch(cfg, n=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.model.vocab_size, (n or cfg.train.batch_size, cfg.train.seq_len + 1), generator=g)


def test_step_returns_the_loss_and_the_phase_timings():
    cfg, s = built("strategy=lora_qk")
    trainer = trainer_of(cfg, s)
    batch = _batch(cfg)
    with torch.no_grad():
        before = float(trainer.loss(batch))
    loss, timings = trainer.step([batch], StepTimer(CPU))
    assert loss == pytest.approx(before, rel=1e-6)  # the loss of the weights the step started from
    assert set(timings) == {"step_ms", "forward_ms", "backward_ms", "optimizer_ms"}
    assert sum(timings[k] for k in ("forward_ms", "backward_ms", "optimizer_ms")) <= timings["step_ms"]
    with torch.no_grad():
        assert float(trainer.loss(batch)) != before  # it updated the adapters


def test_grad_accumulation_equals_one_big_batch():
    """Two micro-batches of b, loss scaled by 1/2, give the update of one batch of 2b."""
    results = []
    for accum in (1, 2):
        cfg, s = built("strategy=lora_qk", "train.batch_size=4", f"train.grad_accum={accum}")
        trainer = trainer_of(cfg, s)
        big = _batch(cfg, 4)
        micro = [big] if accum == 1 else list(big.split(2))
        loss, _ = trainer.step(micro, StepTimer(CPU))
        results.append((loss, [p.detach().clone() for p in trainer.params]))
    (l1, p1), (l2, p2) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_end_the_step_without_gradients():
    cfg, s = built("strategy=lora_qk", "train.grad_clip=0")
    trainer = trainer_of(cfg, s)
    trainer.optimizer.step = lambda: None          # keep the gradients to look at them
    trainer.optimizer.zero_grad = lambda set_to_none=True: None
    trainer.step([_batch(cfg)], StepTimer(CPU))
    for name, p in s.model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name


def test_lora_plus_puts_b_in_its_own_group():
    cfg, s = built("strategy=lora_qk", "lora.lr_ratio=16", "train.lr=0.002")
    groups = trainer_of(cfg, s).optimizer.param_groups
    names = {id(p): n for n, p in s.model.named_parameters()}
    by_lr = {g["lr"]: {names[id(p)].rsplit(".", 1)[-1] for p in g["params"]} for g in groups}
    assert by_lr == {0.002: {"lora_a"}, 0.032: {"lora_b"}}


def test_gradient_clipping_bounds_the_update_norm():
    cfg, s = built("strategy=full", "train.grad_clip=1e-3", "train.lr=1.0")
    trainer = trainer_of(cfg, s)
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, **kw):
        real(params, max_norm, **kw)
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.params])).item())
    torch.nn.utils.clip_grad_norm_, saved = spy, real
    try:
        trainer.step([_batch(cfg)], StepTimer(CPU))
    finally:
        torch.nn.utils.clip_grad_norm_ = saved
    assert norms and norms[0] == pytest.approx(1e-3, rel=1e-3)


def test_evaluate_is_untrained_and_restores_train_mode():
    cfg, s = built("strategy=lora_all", "lora.dropout=0.5")
    trainer = trainer_of(cfg, s)
    batches = [_batch(cfg, seed=i) for i in range(2)]
    a, b = trainer.evaluate(batches), trainer.evaluate(batches)
    assert a == b and s.model.training  # eval mode (no dropout), no update, and back to train mode


def test_the_optimizer_range_is_opened_only_under_the_profiler(monkeypatch):
    """record_function dispatches operations even with no profiler running: a timed step must not."""
    from torch.profiler import profile

    from bench.measure import trainer as trainer_mod

    opened = []
    real = trainer_mod.record_function
    monkeypatch.setattr(trainer_mod, "record_function", lambda name: opened.append(name) or real(name))
    cfg, s = built("strategy=lora_qk")
    trainer = trainer_of(cfg, s)
    trainer.step([_batch(cfg)], StepTimer(CPU, phases=False))
    assert opened == []
    with profile():
        trainer.step([_batch(cfg)], StepTimer(CPU, phases=False))
    assert opened == ["lb::optimizer"]
