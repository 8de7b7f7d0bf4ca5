"""The project.* keys (a projection, bench/project/), and what data parallelism, measured or projected, cannot
combine with, checked for bench/config.py: each refusal one line."""
from __future__ import annotations

from bench.coerce import ConfigError, one_of, positive


def check_project(c) -> None:
    """`c`: the BenchConfig being validated."""
    p, q = c.project, c.quant
    one_of("project.dtype", p.dtype, ("fp32", "bf16"))
    if p.host_op_us is not None:
        positive("project.host_op_us", p.host_op_us)
    if p.host_node_us is not None:
        positive("project.host_node_us", p.host_node_us, allow_zero=True)
    _check_mixed_precision(c)
    if p.gpu is not None and not p.gpu:
        raise ConfigError("project.gpu", "names no device (python -m bench.run project.gpu=list)")
    positive("project.devices", p.devices)
    positive("project.nodes", p.nodes)
    if p.devices % p.nodes:
        raise ConfigError("project.nodes", f"{p.devices} devices do not split evenly over {p.nodes} nodes")
    if p.devices > 1 and p.gpu is None:
        raise ConfigError("project.devices", "is a projection's; name the GPUs too (project.gpu=H100)")
    if p.gpu is not None and c.dist.nproc > 1 and p.devices == 1:
        raise ConfigError("project.devices", f"dist.mode={c.dist.mode} projects onto several GPUs: name how many "
                                             "(project.devices=8)")
    if p.link is not None or p.devices > 1:
        from bench.project.links import lookup

        if p.link is not None:
            lookup(p.link, "project.link")
        lookup(p.network, "project.network")
    if p.mean_seq_len is not None and not 0 < p.mean_seq_len <= c.train.seq_len:
        raise ConfigError("project.mean_seq_len", f"must be in 1..train.seq_len={c.train.seq_len} (the longest "
                                                  f"sequence), got {p.mean_seq_len}")
    if p.train_tokens is not None:
        positive("project.train_tokens", p.train_tokens)
    if c.lora.impl == "fused" and c.dist.mode == "fsdp" and (c.dist.nproc > 1 or p.devices > 1):
        raise ConfigError("lora.impl", "the fused layer keeps a transposed adapter, and FSDP shards only contiguous "
                                       "parameters; under FSDP use lora.impl=eager")
    if p.devices > 1 and q.base != "none":
        raise ConfigError("quant.base", "a quantized base is not sharded or replicated across ranks yet "
                                        "(project.devices=1)")


def _check_mixed_precision(c) -> None:
    """dist.mixed_precision: FSDP2's MixedPrecisionPolicy, on ranks that shard fp32 parameters."""
    d, p = c.dist, c.project
    one_of("dist.mixed_precision", d.mixed_precision, ("none", "bf16"))
    if d.mixed_precision == "none":
        return
    if d.mode != "fsdp" or (d.nproc == 1 and p.devices == 1):
        raise ConfigError("dist.mixed_precision", "is FSDP2's policy: shard over ranks (parallel=fsdp dist.nproc=2, "
                                                  "or project.devices=8 to project)")
    if p.gpu is not None and p.dtype != "fp32":
        raise ConfigError("dist.mixed_precision", "keeps fp32 parameters and casts them to bf16 itself: "
                                                  "project.dtype=fp32")
