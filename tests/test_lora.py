import pytest
import torch
import torch.nn as nn

from bench.lora import LoRALinear, merge_all
from bench.model import Transformer
from bench.strategies import STRATEGIES, apply_strategy


def _base(i=24, o=40):
    torch.manual_seed(0)
    return nn.Linear(i, o, bias=False)


@pytest.mark.parametrize("init", ["A", "B", "gaussian"])
def test_adapter_is_identity_at_init(init):
    base = _base()
    x = torch.randn(3, 5, 24)
    expected = base(x)
    lora = LoRALinear(base, rank=4, scale=2.0, init=init)
    torch.testing.assert_close(lora(x), expected, rtol=0, atol=0)
    # Exactly one of A, B is zero, the other random: training can move away from the base.
    zero = [n for n in ("lora_a", "lora_b") if not getattr(lora, n).any()]
    assert zero == (["lora_a"] if init == "B" else ["lora_b"])


def test_merge_matches_adapter_path():
    lora = LoRALinear(_base(), rank=4, scale=0.5, init="A")
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(7, 24)
    y = lora(x)
    torch.testing.assert_close(lora.merge()(x), y, rtol=1e-5, atol=1e-5)


def test_adapter_forward_is_scaled_low_rank_update():
    lora = LoRALinear(_base(), rank=3, scale=0.25, init="A")
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(4, 24)
    expected = x @ lora.base.weight.T + 0.25 * x @ lora.lora_a.T @ lora.lora_b.T
    torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-5)


def test_only_adapter_params_train_and_dropout_is_off_in_eval():
    lora = LoRALinear(_base(), rank=2, scale=1.0, dropout=0.5)
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == list(lora.adapter_params())
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(10, 24)
    lora.eval()
    torch.testing.assert_close(lora(x), lora(x))


def test_merge_all_unties_the_head_before_merging(cfg_of):
    cfg = cfg_of("strategy=lora_last")
    torch.manual_seed(0)
    model = Transformer(cfg.model).eval()
    apply_strategy(model, STRATEGIES["lora_last"], cfg.lora)
    with torch.no_grad():
        model.output.lora_b.normal_(std=0.1)
    emb_before = model.tok_embeddings.weight.detach().clone()
    x = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        y = model(x)
        merge_all(model)
        torch.testing.assert_close(model(x), y, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.tok_embeddings.weight, emb_before, rtol=0, atol=0)
