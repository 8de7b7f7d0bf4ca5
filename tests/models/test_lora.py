import pytest
import torch
import torch.nn as nn

from bench.models.lora import LoRALinear, merge_all
from bench.models.model import Transformer
from bench.models.strategies import STRATEGIES, apply_strategy


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


def test_adapter_forward_is_scaled_low_rank_update():
    lora = LoRALinear(_base(), rank=3, scale=0.25, init="A")
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(4, 24)
    expected = x @ lora.base.weight.T + 0.25 * x @ lora.lora_a.T @ lora.lora_b.T
    torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-5)


def test_adapter_params_are_the_layers_own():
    lora = LoRALinear(_base(), rank=2, scale=1.0)
    roles = lora.adapter_params()
    assert roles["A"] is lora.lora_a and roles["B"] is lora.lora_b
    assert roles["A"].shape == (2, 24) and roles["B"].shape == (40, 2)


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    lora = LoRALinear(_base(), rank=4, scale=1.0, dropout=0.5)
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(64, 24)
    exact = x @ lora.base.weight.T + x @ lora.lora_a.T @ lora.lora_b.T
    lora.train()
    a, b = lora(x), lora(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, exact)  # a fresh mask each call
    lora.eval()
    torch.testing.assert_close(lora(x), exact, rtol=1e-5, atol=1e-5)


def test_merge_matches_the_adapter_path_and_is_idempotent():
    lora = LoRALinear(_base(), rank=4, scale=2.0, init="A")
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(5, 24)
    y = lora(x)
    once = lora.merge().weight.detach().clone()
    twice = lora.merge().weight
    torch.testing.assert_close(twice, once, rtol=0, atol=0)  # the update was added once
    torch.testing.assert_close(lora(x), y, rtol=1e-5, atol=1e-5)  # and the merged layer computes the same


def test_the_strategy_owns_trainability(cfg_of):
    cfg = cfg_of("strategy=lora_qk")
    model = Transformer(cfg.model)
    apply_strategy(model, STRATEGIES["lora_qk"], cfg.lora)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{i}.attention.{w}.lora_{ab}" for i in range(cfg.model.n_layers)
                         for w in ("wq", "wk") for ab in "ab"}


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


def test_dora_is_the_base_at_init_and_the_paper_formula_after():
    base = _base()
    x = torch.randn(3, 5, 24)
    lora = LoRALinear(base, rank=4, scale=2.0, dora=True)
    # m starts at the row norms of W (B = 0), so the layer computes W x exactly
    torch.testing.assert_close(lora.magnitude.detach(), base.weight.norm(dim=1))
    torch.testing.assert_close(lora(x), base(x), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        lora.lora_b.normal_()
        lora.magnitude.mul_(torch.linspace(0.5, 1.5, 40))
    w = base.weight + 2.0 * lora.lora_b @ lora.lora_a
    expected = x @ (lora.magnitude[:, None] * w / w.norm(dim=1, keepdim=True)).T  # m · (W + sBA) / ‖W + sBA‖
    torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-5)
    merged = lora.merge()
    torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


def test_dora_norm_is_detached_and_the_magnitude_trains():
    lora = LoRALinear(_base(), rank=4, scale=1.0, dora=True)
    with torch.no_grad():
        lora.lora_b.normal_()
    lora(torch.randn(6, 24)).pow(2).sum().backward()
    assert lora.magnitude.grad is not None and lora.magnitude.grad.shape == (40,)
    assert lora.adapter_params()["M"] is lora.magnitude
    # the norm is a constant to autograd: the weight norm's graph holds no adapter parameter
    assert not lora.weight_norm(torch.float32).requires_grad


def test_dora_trainable_count_is_lora_plus_one_magnitude_per_output_row(cfg_of):
    cfg = cfg_of("strategy=lora_all", "lora.rank=4", "lora.dora=true")
    model = Transformer(cfg.model)
    apply_strategy(model, STRATEGIES["lora_all"], cfg.lora)
    d, kv, h, n_blocks = 128, 64, 384, 2
    shapes = [(d, d), (d, kv), (d, kv), (d, d), (d, h), (h, d), (d, h)]  # (in, out): q k v o gate down up
    closed = n_blocks * sum(4 * (i + o) + o for i, o in shapes)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == closed


@pytest.mark.parametrize("dora", [False, True])
def test_fp32_adapters_under_a_bf16_base_compute_in_fp32_and_return_bf16(dora):
    """PEFT's autocast_adapter_dtype: A, B (and m) in fp32, the input cast up, the sum cast back."""
    base = _base().to(torch.bfloat16).requires_grad_(False)  # frozen, as the strategy leaves it
    lora = LoRALinear(base, rank=4, scale=2.0, dora=dora, adapter_dtype=torch.float32)
    assert {p.dtype for p in lora.adapter_params().values()} == {torch.float32}
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(3, 5, 24).to(torch.bfloat16)
    y = lora(x)
    assert y.dtype == torch.bfloat16
    xf, w = x.float(), base.weight.float()
    update = 2.0 * xf @ lora.lora_a.T @ lora.lora_b.T
    if dora:  # PEFT's order: g = m / ‖W + sBA‖ in fp32; base product in bf16, then g·(Wx) + g·sBAx
        g = lora.magnitude / (w + 2.0 * lora.lora_b @ lora.lora_a).norm(dim=1)
        expected = (base(x).float() * g + g * update).to(torch.bfloat16)
    else:
        expected = (base(x).float() + update).to(torch.bfloat16)
    torch.testing.assert_close(y, expected, rtol=1e-2, atol=1e-2)
    y.float().pow(2).sum().backward()
    assert lora.lora_a.grad.dtype == lora.lora_b.grad.dtype == torch.float32


def test_fp32_adapters_are_a_no_op_on_an_fp32_base():
    """No cast is dispatched where base and adapter already agree: autocast's own casts stay as they were."""
    plain, fp32 = LoRALinear(_base(), 4, 1.0), LoRALinear(_base(), 4, 1.0, adapter_dtype=torch.float32)
    assert not fp32.upcast
    x = torch.randn(2, 24)
    torch.testing.assert_close(fp32(x), plain(x), rtol=0, atol=0)
