"""What a projection's configuration cannot be (bench/project/checks.py, and the dist keys it reads),
refused in one line naming the key."""
import pytest

from bench.config import ConfigError


@pytest.mark.parametrize("overrides, key, says", [
    (["dist.mode=tp"], "dist.mode", "tensor parallelism is out of scope"),
    (["dist.mode=pp"], "dist.mode", "pipeline parallelism is out of scope"),
    (["dist.shard=zero3"], "dist.shard", "not one of full, grad_op"),
    (["project.devices=8"], "project.devices", "name the GPUs too"),
    (["parallel=fsdp", "project.gpu=H100"], "project.devices", "name how many"),
    (["project.gpu=H100", "project.devices=6", "project.nodes=4"], "project.nodes", "do not split evenly"),
    (["project.gpu=H100", "project.devices=2", "strategy=lora_all", "quant.base=nf4"], "quant.base", "across ranks"),
    (["project.gpu=H100", "project.mean_seq_len=100", "train.seq_len=64"], "project.mean_seq_len", "must be in 1..train.seq_len=64"),
    (["project.gpu=H100", "project.train_tokens=0"], "project.train_tokens", "must be > 0"),
    (["parallel=fsdp", "project.gpu=H100", "project.devices=2", "lora.impl=fused"], "lora.impl", "under FSDP use"),
    (["parallel=fsdp", "dist.nproc=2", "lora.impl=fused"], "lora.impl", "under FSDP use"),
    (["dist.mixed_precision=fp8"], "dist.mixed_precision", "not one of none, bf16"),
    (["dist.nproc=2", "dist.mixed_precision=bf16"], "dist.mixed_precision", "is FSDP2's policy"),
    (["dist.mode=fsdp", "dist.mixed_precision=bf16"], "dist.mixed_precision", "is FSDP2's policy"),
    (["parallel=fsdp", "project.gpu=H100", "project.devices=8", "project.dtype=bf16", "dist.mixed_precision=bf16"],
     "dist.mixed_precision", "project.dtype=fp32"),
    (["project.gpu=H100", "project.host_node_us=-1"], "project.host_node_us", ">= 0"),
])
def test_what_a_projection_cannot_be_is_refused_in_one_line(cfg_of, overrides, key, says):
    with pytest.raises(ConfigError) as e:
        cfg_of(*overrides)
    assert e.value.key == key and says in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_link_is_named(cfg_of):
    with pytest.raises(ConfigError, match="project.link: 'NVLink9' is not a link the projection knows; one of: NVLink4"):
        cfg_of("project.gpu=H100", "project.devices=8", "project.link=NVLink9")
    with pytest.raises(ConfigError, match="project.network: 'IB-XDR' is not a link"):
        cfg_of("project.gpu=H100", "project.devices=16", "project.nodes=2", "project.network=IB-XDR")
