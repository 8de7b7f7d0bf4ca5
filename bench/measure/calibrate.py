"""The two constants of the report's cost model, measured on the machine that ran the job.

    predicted step time = FLOPs / matmul throughput + ops x per-op overhead

- matmul throughput: a GEMM shaped like the model's FFN layer (tokens x dim @ dim x hidden),
  in the job's precision: what a matmul achieves at this size on this device.
- per-op overhead: a chain of elementwise ops on 256 numbers, where dispatch and launch are
  the whole cost: what every extra operation costs, whatever its size.
- per-node overhead: the same chain built under autograd and run backward, less the plain chain:
  what autograd adds per differentiable operation (recording its node in the forward, the engine
  running it in the backward; `x + 1.0`'s backward dispatches no operation of its own). The
  projection prices a step's nodes with it (bench/project/timeline.py). Costs that grow with
  an op's size (memory traffic of elementwise ops on large activations) are not in this
  model; where they matter, predicted and measured ratios disagree and the report says so.
Measured once per (device, precision, shape) in a process, so every job of a sweep shares them.
"""
from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _time(fn, device: torch.device, budget_s: float = 0.3) -> float:
    """Median seconds of `fn()` over as many runs (3 to 20) as fit in `budget_s`, after warm-up."""
    fn()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    reps = int(min(20, max(3, budget_s / max(time.perf_counter() - t, 1e-9))))
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t)
    return float(np.median(out))


@lru_cache(maxsize=32)
def _calibrate(device_str: str, precision: str, tokens: int, dim: int, hidden: int) -> dict:
    device = torch.device(device_str)
    dtype = _DTYPES[precision]
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(tokens, dim, device=device, dtype=dtype, generator=gen)
    b = torch.randn(dim, hidden, device=device, dtype=dtype, generator=gen)
    matmul_s = _time(lambda: a @ b, device)
    n_ops = 200
    tiny = torch.zeros(256, device=device)

    def chain():
        x = tiny
        for _ in range(n_ops):
            x = x + 1.0
        return x

    leaf = torch.zeros(256, device=device, requires_grad=True)

    def graph():
        x = leaf
        for _ in range(n_ops):
            x = x + 1.0
        x.sum().backward()
        leaf.grad = None

    op_s = _time(chain, device) / n_ops
    node_s = max(0.0, _time(graph, device) / n_ops - op_s)
    return {"matmul_flops_per_s": 2.0 * tokens * dim * hidden / matmul_s, "op_overhead_s": op_s,
            "node_overhead_s": node_s, "matmul_shape": [tokens, dim, hidden], "precision": precision}


def calibrate(device: torch.device, precision: str, tokens: int, dim: int, hidden: int) -> dict:
    return dict(_calibrate(str(device), precision, tokens, dim, hidden))
