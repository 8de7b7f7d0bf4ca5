"""The profiled step: categories that add up, adapters only where there are adapters, and
operation counts that follow the number of adapted layers (native and PEFT alike)."""
import pytest
import torch

from bench.measure.attribution import ADAPTER, CATEGORIES, gpu_idle_ms, module_categories, profile_step, split
from bench.measure.timer import StepTimer
from tests.conftest import built, trainer_of

SMALL = ["model.dim=32", "model.n_heads=2", "model.n_kv_heads=1", "model.n_layers=4", "train.batch_size=1",
         "train.seq_len=16"]
CPU = torch.device("cpu")


def _attribution(*overrides):
    cfg, s = built(*SMALL, *overrides)
    trainer = trainer_of(cfg, s)
    micro = next(s.train_batches(cfg, 1))
    return profile_step(lambda: trainer.step(micro, StepTimer(CPU, phases=False)), s.model, CPU)


BACKENDS = ["native", pytest.param("peft", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("peft") is None, reason="needs the hf extra"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_categories_add_up_and_adapters_appear_only_with_lora(backend):
    full = _attribution("strategy=full")
    assert set(full["categories"]) == set(CATEGORIES)
    assert sum(full["categories"].values()) == pytest.approx(full["step_ms"], rel=0.05)
    assert all(full["categories"][c] == 0 and full["ops"][c] == 0 for c in ADAPTER)
    for strategy in ("lora_all", "lora_qk", "lora_last"):
        a = _attribution(f"strategy={strategy}", f"lora.backend={backend}")
        assert sum(a["categories"].values()) == pytest.approx(a["step_ms"], rel=0.05), strategy
        assert all(a["categories"][c] > 0 and a["ops"][c] > 0 for c in ADAPTER), (strategy, a)
        assert a["ops"]["optimizer"] > 0 and a["ops"]["base_matmul"] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_twice_the_adapted_layers_twice_the_adapter_operations(backend):
    qk = _attribution("strategy=lora_qk", f"lora.backend={backend}")["ops"]      # 2 layers per block
    attn = _attribution("strategy=lora_attn", f"lora.backend={backend}")["ops"]  # 4 layers per block
    for c in ADAPTER:
        assert attn[c] / qk[c] == pytest.approx(2.0, rel=0.15), (c, qk[c], attn[c])


def test_modules_are_recognised_by_type():
    cfg, s = built(*SMALL, "strategy=lora_qk")
    cats = {name: module_categories(s.model).get(m) for name, m in s.model.named_modules()}
    assert cats["layers.0.attention.wq"] == "adapter_other" and cats["layers.0.attention.wq.base"] == "base_matmul"
    assert cats["layers.0.attention.wv"] == "base_matmul" and cats["layers.0.attention"] == "attention"
    assert cats["layers.0.feed_forward"] is None  # its activation is the model's own work


class Op:  # the few fields `split` reads of a profiler event
    def __init__(self, name, start, end, parent=None):
        self.name, self.cpu_parent, self.cpu_children, self.sequence_nr = name, parent, [], -1
        self.device_type = torch.autograd.DeviceType.CPU
        self.time_range = type("R", (), {"elapsed_us": lambda r: (end - start)})()
        if parent is not None:
            parent.cpu_children.append(self)


def test_framework_is_what_no_operation_covers():
    out = split([Op("aten::add", 0, 1000), Op("aten::mul", 2000, 2500)], wall_ms=4.0)
    assert out["categories"]["norm_activation_other"] == pytest.approx(1.5)
    assert out["categories"]["framework"] == pytest.approx(2.5) and out["ops"]["norm_activation_other"] == 2


def test_gpu_idle_is_the_step_less_the_union_of_kernels():
    kernels = [(10.0, 30.0), (20.0, 40.0), (60.0, 70.0)]  # us; the first two overlap
    assert gpu_idle_ms(kernels, 0.0, 100.0) == pytest.approx((100 - 30 - 10) / 1e3)
    assert gpu_idle_ms([], 0.0, 50.0) == pytest.approx(0.05)


def test_a_fused_node_files_its_marked_base_products_as_base_matmul():
    module = Op("lb::adapter_matmul", 0, 1000)
    node = Op("_FusedLoRA", 0, 1000, module)
    base = Op("lb::base_matmul", 100, 700, node)
    Op("aten::mm", 100, 700, base)
    Op("aten::mm", 750, 900, node)  # the adapter's own product, unmarked
    out = split([module, node, *node.cpu_children, *base.cpu_children], wall_ms=1.0)
    assert out["categories"]["base_matmul"] == pytest.approx(0.6)
    assert out["categories"]["adapter_matmul"] == pytest.approx(0.4)
    assert out["ops"]["base_matmul"] == 1 and out["ops"]["adapter_matmul"] == 1


def test_fused_layers_split_base_and_adapter_products_in_a_real_step():
    # Every linear adapted (the head too): base products can only come from the fused nodes' ranges.
    a = _attribution("strategy=lora_all", "lora.include_head=true", "lora.impl=fused")
    assert sum(a["categories"].values()) == pytest.approx(a["step_ms"], rel=0.05)
    assert a["ops"]["base_matmul"] > 0 and a["ops"]["adapter_matmul"] > 0
    assert a["categories"]["base_matmul"] > 0 and a["categories"]["adapter_matmul"] > 0


def test_a_4bit_base_and_doras_norm_are_measured_categories():
    pytest.importorskip("torchao")
    plain = _attribution("strategy=lora_all")
    assert plain["categories"]["dequantize"] == 0 and plain["categories"]["dora_norm"] == 0
    q = _attribution("strategy=lora_all", "quant.base=nf4", "quant.scaler_block_size=8")  # wk: 8 blocks
    # forward and backward dequantize every one of the 14 bases: at least two operations each
    assert q["categories"]["dequantize"] > 0 and q["ops"]["dequantize"] >= 28
    d = _attribution("strategy=lora_all", "lora.dora=true")
    assert d["categories"]["dora_norm"] > 0 and d["ops"]["dora_norm"] >= 14  # a norm per layer per step


def test_bitsandbytes_dequantization_is_found_by_name():
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("peft")
    a = _attribution("model=hf_llama", "strategy=lora_qv", "lora.backend=peft", "quant.base=nf4")
    assert a["categories"]["dequantize"] > 0 and a["ops"]["dequantize"] > 0
