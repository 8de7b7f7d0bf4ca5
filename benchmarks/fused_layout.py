"""The layout choices of the fused LoRA layer (bench/models/lora_fused.py), measured on this machine.

    python benchmarks/fused_layout.py [--tokens 128] [--rank 8] [--shapes 512x512,512x1408,1408x512]

Each rank-wide product of the layer can be computed in two layouts that give the same numbers:
g·B as (N × r) or as its transpose Bᵀ·gᵀ (r × N); the B gradient gᵀ·x_a as (out × r) or as
x_aᵀ·g (r × out). The layer uses the second of each pair. This times both, interleaved (rounds of
every variant in turn), and prints the median time per call and the ratio second/first: below
1.00, the layer's choice is the faster one here. Ratios, not absolute times, are the finding.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.measure.env import describe


def _time(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def pairs(n: int, r: int, in_f: int, out_f: int) -> dict[str, tuple]:
    """(the other layout, the layer's layout) for each rank-wide product of one layer."""
    g, x = torch.randn(n, out_f), torch.randn(n, in_f)
    b = torch.randn(out_f, r)
    xa = torch.randn(n, r)
    xat = xa.t().contiguous()
    return {
        "g·B": (lambda: torch.mm(g, b), lambda: torch.mm(b.t(), g.t())),
        "dB": (lambda: torch.mm(g.t(), xa), lambda: torch.mm(xat, g)),
        "dA": (lambda: torch.mm(xa.t(), x), lambda: torch.mm(xat, x)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--shapes", default="512x512,512x256,512x1408,1408x512", help="in x out, comma-separated")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=50)
    a = ap.parse_args()
    env = describe(torch.device("cpu"))
    print(f"machine: {env['machine']}; torch {env['torch']}; N = {a.tokens} tokens, r = {a.rank}, "
          f"median of {a.rounds} rounds")
    for shape in a.shapes.split(","):
        in_f, out_f = (int(v) for v in shape.split("x"))
        for name, (other, ours) in pairs(a.tokens, a.rank, in_f, out_f).items():
            for fn in (other, ours):
                _time(fn, 5)
            times = [[_time(fn, a.calls) for fn in (other, ours)] for _ in range(a.rounds)]
            t_other = statistics.median(t[0] for t in times)
            t_ours = statistics.median(t[1] for t in times)
            ratio = statistics.median(t[1] / t[0] for t in times)
            print(f"{in_f:>5}->{out_f:<5} {name:4s} other layout {t_other:7.1f} us, the layer's {t_ours:7.1f} us, "
                  f"ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
