"""Activation checkpointing: the same gradients, fewer saved bytes (closed form), the recompute named."""
import pytest
import torch

from bench.config import ConfigError
from bench.measure import counters
from bench.measure.attribution import profile_step
from bench.models.recompute import apply_checkpointing, blocks
from bench.measure.timer import StepTimer
from tests.conftest import built, trainer_of

B, T = 2, 16


def _step(mode, *extra):
    """One counted step of `mode`: (loss, gradients by name, saved bytes, the setup)."""
    cfg, s = built("strategy=lora_all", f"train.checkpointing={mode}", f"train.batch_size={B}",
                   f"train.seq_len={T}", *extra)
    batch = next(s.train_batches(cfg, 1))
    trainer = trainer_of(cfg, s)
    with counters.StepCounts(s.model) as probe, probe.saved.active():
        loss = trainer.loss(batch[0])
        loss.backward()
    grads = {n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None}
    return float(loss), grads, probe.saved.bytes, s


@pytest.mark.parametrize("mode", ["blocks", "selective", "selective_op"])
def test_checkpointing_changes_no_number_of_the_step(mode):
    loss0, grads0, _, _ = _step("none")
    loss1, grads1, _, _ = _step(mode)
    assert loss1 == loss0 and grads1.keys() == grads0.keys()
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-5, atol=1e-6)


def test_blocks_keep_only_their_inputs_closed_form():
    _, _, none2, _ = _step("none")
    _, _, ckpt1, _ = _step("blocks", "model.n_layers=1")
    _, _, ckpt2, _ = _step("blocks")
    _, _, sel2, _ = _step("selective")
    # one block more keeps one input more: B x T x dim fp32 values (RoPE's tables are the model's, counted once)
    assert ckpt2 - ckpt1 == B * T * 128 * 4
    # selective keeps the matmul outputs on top of the inputs (on this small model more than no
    # checkpointing keeps: what autograd saves of a matmul is mostly its input, not its output)
    assert ckpt2 < sel2 and ckpt2 < none2


def test_torchtitans_op_policy_keeps_attention_and_every_second_matmul():
    from types import SimpleNamespace

    from torch.utils.checkpoint import CheckpointPolicy

    from bench.models.recompute import SDPA_OPS, op_policy

    aten = torch.ops.aten
    sdpa = next(iter(SDPA_OPS))
    block = [aten.mm.default, aten.mm.default, aten.addmm.default, sdpa, aten.mm.default, aten.mm.default,
             aten.mm.default, aten.mm.default, aten.add.Tensor]
    for recompute in (False, True):  # the recompute counts apart, and decides the same
        policy, ctx = op_policy(), SimpleNamespace(is_recompute=recompute, op_output=None)
        kept = [policy(ctx, f) == CheckpointPolicy.MUST_SAVE for f in block]
        assert kept == [True, False, True, True, False, True, False, True, False]
    _, _, blocks2, _ = _step("blocks")
    _, _, op2, _ = _step("selective_op")
    _, _, sel2, _ = _step("selective")
    assert blocks2 < op2 < sel2  # half the matmul outputs, and attention's


def test_the_recompute_is_a_measured_category():
    cfg, s = built("strategy=lora_all", "train.checkpointing=blocks", "train.batch_size=2", "train.seq_len=16")
    trainer = trainer_of(cfg, s)
    batch = next(s.train_batches(cfg, 1))
    a = profile_step(lambda: trainer.step(batch, StepTimer(torch.device("cpu"))), s.model, torch.device("cpu"))
    assert a["categories"]["recompute"] > 0 and a["ops"]["recompute"] >= 2  # one range per block
    cfg, s = built("strategy=lora_all", "train.batch_size=2", "train.seq_len=16")
    trainer = trainer_of(cfg, s)
    a = profile_step(lambda: trainer.step(batch, StepTimer(torch.device("cpu"))), s.model, torch.device("cpu"))
    assert a["categories"]["recompute"] == 0


def test_hugging_face_models_use_their_own_checkpointing():
    pytest.importorskip("transformers")
    loss0, grads0, saved0, _ = _step("none", "model=hf_llama")
    loss1, grads1, saved1, s = _step("blocks", "model=hf_llama")
    layers = blocks(s.model)
    assert len(layers) == 2 and all(m.gradient_checkpointing for m in layers)
    assert loss1 == pytest.approx(loss0, rel=1e-6) and saved1 < saved0
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-4, atol=1e-6)
    assert any("the model's own activation checkpointing" in n for n in s.plan.notes)


def test_a_model_without_blocks_is_refused():
    with pytest.raises(ConfigError, match="train.checkpointing"):
        apply_checkpointing(torch.nn.Sequential(torch.nn.Linear(4, 4)), "blocks")
    assert apply_checkpointing(torch.nn.Sequential(torch.nn.Linear(4, 4)), "none") is None
