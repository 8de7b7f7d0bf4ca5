"""The build stage: model, base weights, strategy and data, and nothing that trains."""
import pytest
import torch

from bench.models.setup import EVAL_SEED_OFFSET, resolve_device
from bench.config import ConfigError
from tests.conftest import built


def test_setup_applies_the_strategy_and_draws_the_held_out_set():
    cfg, s = built("strategy=lora_all", "lora.rank=4", "train.eval_batches=3")
    assert s.plan.uses_lora and len(s.plan.adapted) == 7 * cfg.model.n_layers and not s.plan.backward_stops_early
    assert len(s.adapters["A"]) == len(s.adapters["B"]) == len(s.plan.adapted)
    assert all(p.requires_grad for p in s.adapters["A"] + s.adapters["B"])
    assert (s.shape.dim, s.shape.vocab_size) == (cfg.model.dim, cfg.model.vocab_size)
    # The held-out set comes from its own stream: the same for every job on this language.
    gen = torch.Generator().manual_seed(EVAL_SEED_OFFSET + cfg.data.seed)
    first = s.source.batch(cfg.train.batch_size, cfg.train.seq_len, gen)
    assert len(s.eval_batches) == 3 and torch.equal(s.eval_batches[0], first)
    _, other = built("strategy=full", "train.seed=5", "train.eval_batches=3")
    assert torch.equal(other.eval_batches[0], first)


def test_setup_never_trains():
    _, s = built("strategy=lora_qk")
    assert all(p.grad is None for p in s.model.parameters())
    assert not any(torch.count_nonzero(b) for b in s.adapters["B"])  # B starts at zero: nothing learned


def test_training_batches_follow_the_seed_and_the_accumulation():
    cfg, s = built("train.grad_accum=2", "train.batch_size=3")
    steps = list(s.train_batches(cfg, 2))
    assert [len(m) for m in steps] == [2, 2] and steps[0][0].shape == (3, cfg.train.seq_len + 1)
    again = list(s.train_batches(cfg, 2))
    assert all(torch.equal(a, b) for x, y in zip(steps, again) for a, b in zip(x, y))


@pytest.mark.parametrize("strategy, early", [("lora_last", True), ("head_only", True), ("lora_qk", False),
                                             ("full", False)])
def test_the_plan_says_where_backward_stops(strategy, early):
    assert built(f"strategy={strategy}")[1].plan.backward_stops_early is early


def test_lora_on_the_last_block_stops_backward_early():
    assert built("strategy=lora_all", "lora.layers=[-1]")[1].plan.backward_stops_early


def test_cuda_asked_for_without_one_is_a_config_error(cfg_of):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ConfigError, match="device"):
        resolve_device(cfg_of("device=cuda"))
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_device(cfg_of("train.precision=fp16"))


def test_more_ranks_than_gpus_is_refused_before_any_cuda_call(cfg_of, monkeypatch):
    import pytest
    import torch

    from bench.models.setup import resolve_device
    from bench.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="dist.nproc: 2 ranks need one GPU each; this machine has 1"):
        resolve_device(cfg_of("device=cuda", "dist.nproc=2"))
