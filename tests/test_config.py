import math

import pytest
from omegaconf import OmegaConf

from bench.config import ConfigError, load_config
from tests.conftest import compose_cfg


def test_default_config_is_valid(cfg_of):
    cfg = cfg_of()
    assert cfg.model.name == "tiny" and cfg.strategy.name == "full" and cfg.data.name == "markov"


@pytest.mark.parametrize("alpha, rslora, expected", [(None, False, 1.0), (16, False, 2.0),
                                                     (16, True, 16 / math.sqrt(8))])
def test_lora_scale(cfg_of, alpha, rslora, expected):
    cfg = cfg_of("lora.rank=8", f"lora.alpha={'null' if alpha is None else alpha}", f"lora.rslora={rslora}")
    assert cfg.lora.scale == pytest.approx(expected)


@pytest.mark.parametrize("override, key", [
    ("lora.rank=0", "lora.rank"), ("lora.rank=1.5", "lora.rank"), ("train.batch_size=0", "train.batch_size"),
    ("train.seq_len=0", "train.seq_len"), ("train.seq_len=2048", "train.seq_len"),
    ("train.precision=fp8", "train.precision"), ("device=tpu", "device"), ("lora.init=C", "lora.init"),
    ("lora.dropout=1.0", "lora.dropout"), ("train.phases=maybe", "train.phases"),
    ("model.n_kv_heads=3", "model.n_kv_heads"), ("lora.layers=[]", "lora.layers"),
    ("lora.adapter_dtype=fp16", "lora.adapter_dtype"), ("lora.adapter_dtype=fp32 lora.impl=fused", "lora.adapter_dtype"),
    ("lora.adapter_dtype=fp32 lora.backend=peft", "lora.adapter_dtype"),
])
def test_bad_values_name_their_key_in_one_line(cfg_of, override, key):
    with pytest.raises(ConfigError) as e:
        cfg_of(*override.split())
    assert e.value.key == key
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_unknown_and_missing_keys():
    node = OmegaConf.to_container(compose_cfg(), resolve=True)
    node["train"]["stepz"] = 3
    with pytest.raises(ConfigError, match="train.stepz: unknown key"):
        load_config(node)
    del node["train"]["stepz"], node["train"]["lr"]
    with pytest.raises(ConfigError, match="train.lr: missing"):
        load_config(node)
