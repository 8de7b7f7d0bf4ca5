"""The PEFT backend: the same layers, counts and loss trajectory as the native one (the hf extra)."""
import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("transformers")

from bench.models.lora import lora_modules  # noqa: E402
from bench.measure.timer import StepTimer  # noqa: E402
from tests.models.test_hf import CLOSED, _prepared  # noqa: E402
from tests.conftest import trainer_of  # noqa: E402


def _trajectories(cfg, source, s_native, s_peft) -> dict[str, list[float]]:
    """Five training losses of each backend, on the same batches."""
    gen = torch.Generator().manual_seed(3)
    batches = [source.batch(4, 32, gen) for _ in range(5)]
    losses = {}
    for key, s in (("native", s_native), ("peft", s_peft)):
        trainer = trainer_of(cfg, s)
        losses[key] = [trainer.step([b], StepTimer(torch.device("cpu")))[0] for b in batches]
    return losses


@pytest.mark.parametrize("strategy", sorted(CLOSED))
def test_trainable_counts_match_peft_and_the_closed_form(strategy):
    _, _, native, _ = _prepared(f"strategy={strategy}", "lora.rank=4")
    _, _, wrapped, _ = _prepared(f"strategy={strategy}", "lora.rank=4", "lora.backend=peft")
    trainable_peft, _ = wrapped.get_nb_trainable_parameters()  # what print_trainable_parameters prints
    trainable_native = sum(p.numel() for p in native.parameters() if p.requires_grad)
    assert trainable_native == trainable_peft == 4 * CLOSED[strategy]


def test_native_and_peft_follow_the_same_loss_trajectory():
    cfg, source, native, s_native = _prepared("strategy=lora_all", "lora.rank=4", "lora.alpha=8")
    _, _, wrapped, s_peft = _prepared("strategy=lora_all", "lora.rank=4", "lora.alpha=8", "lora.backend=peft")
    torch.manual_seed(1)
    for name, layer in lora_modules(native):  # same start, and B non-zero so the adapters matter
        with torch.no_grad():
            layer.lora_b.normal_(std=0.02)
        target = wrapped.base_model.model.get_submodule(name)
        with torch.no_grad():
            target.lora_A["default"].weight.copy_(layer.lora_a)
            target.lora_B["default"].weight.copy_(layer.lora_b)
    losses = _trajectories(cfg, source, s_native, s_peft)
    assert losses["native"] == pytest.approx(losses["peft"], rel=1e-5)
    assert losses["native"][-1] < losses["native"][0]


def test_peft_refuses_what_it_cannot_express():
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="lora.init"):
        _prepared("strategy=lora_qk", "lora.backend=peft", "lora.init=B")
    # Full fine-tuning has nothing for PEFT to adapt: it is built as it always is, and says so.
    _, _, _, s = _prepared("strategy=full", "lora.backend=peft")
    assert any("do not apply to strategy=full" in n for n in s.plan.notes)
    assert all(p.requires_grad for p in s.model.parameters())


def test_lora_plus_groups_find_peft_names():
    cfg, _, wrapped, s = _prepared("strategy=lora_qk", "lora.backend=peft", "lora.lr_ratio=16", "train.lr=0.001")
    groups = trainer_of(cfg, s).optimizer.param_groups
    assert sorted((g["lr"], len(g["params"])) for g in groups) == [(0.001, 4), (0.016, 4)]
    names = {id(p): n for n, p in wrapped.named_parameters()}
    fast = next(g for g in groups if g["lr"] == 0.016)
    assert all(".lora_B." in names[id(p)] for p in fast["params"])  # found through PEFT's layers


def test_native_dora_follows_peft_dora():
    """Same trainable count (the magnitudes included), and from the same values the same losses."""
    cfg, source, native, s_native = _prepared("strategy=lora_all", "lora.rank=4", "lora.alpha=8", "lora.dora=true")
    _, _, wrapped, s_peft = _prepared("strategy=lora_all", "lora.rank=4", "lora.alpha=8", "lora.dora=true",
                                      "lora.backend=peft")
    trainable_peft, _ = wrapped.get_nb_trainable_parameters()
    assert sum(p.numel() for p in native.parameters() if p.requires_grad) == trainable_peft
    assert trainable_peft == 4 * CLOSED["lora_all"] + sum(len(m) for m in s_native.adapters["M"])
    assert len(s_peft.adapters["M"]) == len(s_native.adapters["M"]) == 14
    torch.manual_seed(1)
    for name, layer in lora_modules(native):
        with torch.no_grad():
            layer.lora_b.normal_(std=0.02)
            layer.reset_magnitude()  # m = ‖W + sBA‖: where PEFT's own init puts it
        target = wrapped.base_model.model.get_submodule(name)
        with torch.no_grad():
            target.lora_A["default"].weight.copy_(layer.lora_a)
            target.lora_B["default"].weight.copy_(layer.lora_b)
            target.lora_magnitude_vector["default"].weight.copy_(layer.magnitude)
    losses = _trajectories(cfg, source, s_native, s_peft)
    assert losses["native"] == pytest.approx(losses["peft"], rel=1e-5, abs=1e-5)
    assert losses["native"][-1] < losses["native"][0]
