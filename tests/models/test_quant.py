"""QLoRA's 4-bit base: bytes against the closed form, products against the dense weight, refusals."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("torchao")

from bench.config import ConfigError  # noqa: E402
from bench.measure import counters  # noqa: E402
from bench.models.quant import FrozenNF4Linear, nf4_bytes  # noqa: E402
from tests.conftest import built  # noqa: E402

TINY_SCALER = "quant.scaler_block_size=32"  # tiny's wk (128 x 64) has 128 blocks of 64


def test_nf4_bytes_are_the_closed_form_and_a_quarter_of_bf16():
    linear = nn.Linear(512, 256, bias=False)
    q = FrozenNF4Linear(linear, 64, 256)
    n = 512 * 256
    assert counters.stored_bytes(q.weight) == nf4_bytes(n, 64, 256, 4)
    # 4 bits per weight plus one int8 scale per 64: 0.5 + 1/64 bytes per weight, within 1%
    assert counters.stored_bytes(q.weight) == pytest.approx(n * (0.5 + 1 / 64), rel=0.01)


def test_the_nf4_layer_computes_with_its_dequantized_weight_both_ways():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128, bias=False)
    q = FrozenNF4Linear(linear, 64, 256)
    dense = q.weight.to(torch.float32)
    error = (dense - linear.weight).norm() / linear.weight.norm()
    assert 0 < error < 0.15  # 4 bits: close, not equal
    x = torch.randn(3, 256, requires_grad=True)
    y = q(x)
    assert torch.allclose(y, F.linear(x, dense), atol=1e-6)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.ones(3, 128) @ dense, atol=1e-5)
    assert not q.weight.requires_grad


def test_qlora_job_quantizes_the_adapted_bases_and_counts_their_packed_bytes():
    _, plain = built("strategy=lora_all", TINY_SCALER)
    _, s = built("strategy=lora_all", "quant.base=nf4", TINY_SCALER)
    q = s.quant
    assert q.library == "torchao" and len(q.layers) == q.adapted == 14  # 7 linears x 2 blocks
    shapes = {"wq": (128, 128), "wk": (64, 128), "wv": (64, 128), "wo": (128, 128),
              "w1": (384, 128), "w2": (128, 384), "w3": (384, 128)}
    closed = 2 * sum(nf4_bytes(a * b, 64, 32, 4) for a, b in shapes.values())
    assert q.bytes_after == closed
    assert q.bytes_before == 2 * sum(a * b for a, b in shapes.values()) * 4
    # memory.weights_bytes: the model as stored, the quantized bases at their packed size
    assert counters.weights_bytes(s.model) == counters.weights_bytes(plain.model) - q.bytes_before + q.bytes_after
    # the adapters and what trains are unchanged
    assert counters.param_counts(s.model)["trainable"] == counters.param_counts(plain.model)["trainable"]


def test_scope_frozen_quantizes_every_untied_frozen_linear():
    _, s = built("strategy=lora_qk", "quant.base=nf4", "quant.scope=frozen", TINY_SCALER)
    names = set(s.quant.layers)
    assert "layers.0.attention.wq.base" in names and "layers.0.feed_forward.w1" in names
    assert "output" not in names  # tied to the embedding, which reads it dense
    assert s.quant.adapted == 4


@pytest.mark.parametrize("overrides, key", [
    (["strategy=full", "quant.base=nf4"], "quant.base"),
    (["strategy=lora_all", "quant.base=nf4", "lora.impl=fused"], "lora.impl"),
    (["strategy=lora_all", "quant.base=nf4", "train.compile=true"], "quant.base"),
    (["strategy=lora_all", "quant.base=int3"], "quant.base"),
    (["strategy=lora_all", "quant.base=nf4", "quant.scaler_block_size=256"], "quant.scaler_block_size"),  # wk: 128
    (["strategy=lora_all", "quant.base=nf4", "quant.block_size=96"], "quant.block_size"),
])
def test_what_nf4_cannot_do_is_refused_in_one_line(overrides, key):
    with pytest.raises(ConfigError) as e:
        built(*overrides)
    assert e.value.key == key and "\n" not in str(e.value)


def test_the_default_second_level_block_is_torchaos_256_halved_until_it_divides_every_layer():
    from bench.models.quant import auto_scaler_block

    assert auto_scaler_block([1024, 512]) == 256 and auto_scaler_block([256, 128]) == 128
    assert auto_scaler_block([96]) == 32 and auto_scaler_block([7]) == 1
    # QLoRA on the default model runs with no key set: tiny's wq has 256 blocks of 64, its wk 128.
    _, s = built("strategy=lora_all", "quant.base=nf4")
    assert s.quant.scaler_block_size == 128
    assert all(m.weight.scaler_block_size == 128 for m in s.model.modules() if type(m).__name__ == "FrozenNF4Linear")


def test_the_peft_backend_runs_bitsandbytes_4bit_under_peft():
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("peft")
    from peft.tuners.lora.bnb import Linear4bit as PeftLinear4bit

    _, s = built("model=hf_llama", "strategy=lora_qv", "lora.backend=peft", "quant.base=nf4")
    q = s.quant
    assert q.library == "bitsandbytes" and len(q.layers) == 4
    wrapped = [m for m in s.model.modules() if isinstance(m, PeftLinear4bit)]
    assert len(wrapped) == 4  # PEFT's own bnb LoRA layer, as under from_pretrained(load_in_4bit=True)
    # bitsandbytes' layout: codes at 4 bits, absmax at 8 bits per 64 (compress_statistics), their fp32
    # scale per 256 absmax with its 256-entry fp32 code, the nf4 code (16 fp32) and an fp32 offset
    closed = lambda n: n // 2 + n // 64 + 16 * 4 + 4 + -(-n // (64 * 256)) * 4 + 256 * 4  # noqa: E731
    assert q.bytes_after == 2 * (closed(128 * 128) + closed(64 * 128))
    x = torch.randint(0, 256, (2, 16))
    s.model(x).float().pow(2).mean().backward()
    assert all(p.grad is not None for p in s.adapters["A"] + s.adapters["B"])
