"""The devices a projection can target, each figure with its source.

Peak FLOP/s are dense (no sparsity), for matmuls on tensor cores where the dtype uses them; fp32
matmuls run on the CUDA cores (PyTorch's default: torch.backends.cuda.matmul.allow_tf32 is False).
Where PyTorch ships the device (torch._inductor.analysis.device_info), its figures are read from
there; the others are typed from the datasheets cited beside them. Memory: the datasheet's GB, which
for HBM and GDDR capacities are binary (GiB).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.config import ConfigError

T = 1e12


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: int
    matmul_flops: dict   # dtype name -> dense FLOP/s of a matmul
    bandwidth: float     # bytes/s of device memory
    source: str
    launch_s: float = 0.0  # a kernel launch's host cost (CUDA), on top of the dispatcher's
    matmul_efficiency: float = 1.0     # the achieved fraction of the peak (ACHIEVED, for a GPU)
    bandwidth_efficiency: float = 1.0  # the achieved fraction of the memory bandwidth


# The achieved fractions of the datasheet peaks, fitted on the published runs marked `calibration`
# (results/reference/published/runs.json) by `python benchmarks/published_check.py --fit`, which
# writes this file; its error is reported on the `check` rows. Absent: the peaks themselves.
ACHIEVED = Path(__file__).with_name("achieved.json")


def achieved() -> dict | None:
    try:
        return json.loads(ACHIEVED.read_text())
    except (OSError, ValueError):
        return None


# cudaLaunchKernel's host-side cost, about 2.5-5 us on current drivers (NVIDIA's CUDA C++ Best
# Practices Guide, "Kernel launch overhead"; PyTorch issue #41383 measures 5-10 us per eager op with
# autograd, of which the dispatcher part is what bench/measure/calibrate.py measures here).
CUDA_LAUNCH_S = 4e-6


def _inductor(name: str, key: str, memory_gib: float | None = None) -> Device | None:
    """A device from PyTorch's own table (dense figures: its sparse ones divided back)."""
    try:
        from torch._inductor.analysis.device_info import lookup_device_info
    except ImportError:
        return None
    info = lookup_device_info(key)
    if info is None:
        return None
    f = info.tops_sparsity_factor
    flops = {"bf16": info.tops[torch.bfloat16] * T / f, "fp16": info.tops[torch.float16] * T / f,
             "fp32": info.tops[torch.float32] * T}
    return Device(name, int((memory_gib or info.dram_gb) * 2**30), flops, info.dram_bw_gbs * 1e9,
                  f"torch._inductor.analysis.device_info[{key!r}] (NVIDIA's datasheet)", CUDA_LAUNCH_S)


def _typed() -> list[Device]:
    return [
        # https://www.nvidia.com/en-us/data-center/h200/ : FP32 67 TFLOPS, BF16/FP16 Tensor 1,979 with
        # sparsity (989 dense), 141 GB HBM3e, 4.8 TB/s (SXM)
        Device("H200", 141 * 2**30, {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}, 4.8e12,
               "NVIDIA H200 datasheet (SXM)", CUDA_LAUNCH_S),
        # Meta's Grand Teton H100, as torchtitan's benchmarks/llama3_h100_202412_torchtitan.md describes it:
        # 96 GB HBM2e, 2.4 TB/s, a 500 W limit; its peak is not published ("between SXM and NVL"), so the
        # SXM part's 989 dense bf16 TFLOPS, which that file's MFU uses too. Published runs exist for it.
        Device("H100-HBM2e-96GB", 96 * 2**30, {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}, 2.4e12,
               "torchtitan's H100 benchmark (Grand Teton: 96 GB HBM2e, 2.4 TB/s, 500 W; the SXM part's peak "
               "assumed)", CUDA_LAUNCH_S),
        # NVIDIA L40S datasheet: FP32 91.6 TFLOPS, BF16 Tensor 362.05 dense (733 sparse), 48 GB GDDR6, 864 GB/s
        Device("L40S", 48 * 2**30, {"bf16": 362.05e12, "fp16": 362.05e12, "fp32": 91.6e12}, 864e9,
               "NVIDIA L40S datasheet", CUDA_LAUNCH_S),
        # NVIDIA Ada Lovelace architecture whitepaper, RTX 4090: FP32 82.6 TFLOPS, FP16/BF16 Tensor with
        # FP32 accumulate (PyTorch's matmuls) 165.2 dense, 24 GB GDDR6X, 1,008 GB/s
        Device("RTX4090", 24 * 2**30, {"bf16": 165.2e12, "fp16": 165.2e12, "fp32": 82.6e12}, 1008e9,
               "NVIDIA Ada Lovelace architecture whitepaper (RTX 4090)", CUDA_LAUNCH_S),
        # NVIDIA Ampere GA102 whitepaper, RTX 3090: FP32 35.6 TFLOPS, FP16/BF16 Tensor with FP32
        # accumulate 71 dense, 24 GB GDDR6X, 936 GB/s
        Device("RTX3090", 24 * 2**30, {"bf16": 71e12, "fp16": 71e12, "fp32": 35.6e12}, 936e9,
               "NVIDIA Ampere GA102 whitepaper (RTX 3090)", CUDA_LAUNCH_S),
        # NVIDIA A10 datasheet (AWS's A10G publishes none of its own; it is an A10 variant): FP32 31.2
        # TFLOPS, BF16 Tensor 125 dense (250 sparse), 24 GB GDDR6, 600 GB/s
        Device("A10G", 24 * 2**30, {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12}, 600e9,
               "NVIDIA A10 datasheet (A10G: AWS's variant of the A10)", CUDA_LAUNCH_S),
    ]


def table() -> dict[str, Device]:
    out = {}
    for name, key, gib in (("H100", "NVIDIA H100", None), ("A100-80GB", "NVIDIA A100", 80.0)):
        d = _inductor(name, key, gib)
        if d is not None:
            out[name] = d
    for d in _typed():
        out[d.name] = d
    fit = achieved()
    if fit is not None:  # a GPU with calibration rows of its own has its own matmul fraction; the others
        own = fit.get("per_gpu", {})  # take the fraction fitted on another GPU's runs, assumed to hold
        out = {k: _fitted(d, own.get(k, {}).get("matmul", fit["matmul"]), fit["bandwidth"],
                          own[k]["source"] if k in own else fit["source"]) for k, d in out.items()}
    return out


def _fitted(d: Device, matmul: float, bandwidth: float, source: str) -> Device:
    return dataclasses.replace(d, matmul_efficiency=matmul, bandwidth_efficiency=bandwidth,
                               source=f"{d.source}; achieved {matmul:.2f} of its matmul peak and {bandwidth:.2f} of its "
                                      f"bandwidth ({source})")


def lookup(name: str) -> Device:
    devices = table()
    if name not in devices:
        raise ConfigError("project.gpu", f"{name!r} is not a device the projection knows; "
                                         f"one of: {', '.join(devices)} (python -m bench.run project.gpu=list)")
    return devices[name]


def host_device(matmul_flops_per_s: float, bandwidth: float, name: str) -> Device:
    """This machine as a device, from its own calibration: the self-projection's check. No launch: on a
    CPU the operation runs on the thread that dispatches it."""
    return Device(name, 0, {"bf16": matmul_flops_per_s, "fp16": matmul_flops_per_s, "fp32": matmul_flops_per_s},
                  bandwidth, "this machine's calibration (bench/measure/calibrate.py)", 0.0)


def listing() -> str:
    lines = []
    for d in table().values():
        lines.append(f"{d.name}: {d.memory_bytes / 2**30:.0f} GiB, bf16 {d.matmul_flops['bf16'] / T:.0f} TFLOP/s, "
                     f"fp32 {d.matmul_flops['fp32'] / T:.1f} TFLOP/s, {d.bandwidth / 1e9:.0f} GB/s ({d.source})")
    return "\n".join(lines)
