"""The projection's time check: project this CPU itself over a measured sweep, cell by cell.

    python benchmarks/self_projection.py results/reference/crossover/amd-epyc-2-threads/records \
        --out results/reference/projection_check/amd-epyc-2-threads

Every measured record's configuration is run again on fake tensors (bench/project/fake.py) and
priced for this machine as a device: its matmul throughput and per-operation cost are the record's
own calibration (bench/measure/calibrate.py), its memory bandwidth is measured here, and on a CPU
the host runs each operation itself (bench/project/timeline.py, serial). The projected ratio
t_LoRA / t_full of each cell is set against the measured one (the median step of its repeats over
full fine-tuning's); the table and the median absolute error of the ratios are written out. Run it
on the machine that measured the records, quiet: the bandwidth is measured here.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.config import load_config  # noqa: E402
from bench.project.devices import host_device  # noqa: E402
from bench.project.fake import fake_step  # noqa: E402
from bench.project.timeline import project_time  # noqa: E402
from bench.record.store import read_record  # noqa: E402


def bandwidth(mib: int = 64, rounds: int = 20) -> float:
    """Bytes per second of a large copy on this machine (read + write), the median of `rounds`."""
    a, b = torch.randn(mib * 2**18), torch.empty(mib * 2**18)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t0)
    return 2 * a.nbytes / statistics.median(times)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def config_of(rec) -> object:
    """The record's configuration over today's defaults (keys added since it was measured keep them)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        node = OmegaConf.to_container(compose("config"), resolve=True)
    node.pop("hydra", None)
    merged = _merge(node, {k: v for k, v in rec.config.items() if k != "hydra"})
    return load_config(merged)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("records", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    bw = bandwidth()
    cells: dict[tuple, dict[str, list]] = {}
    for path in sorted(a.records.glob("*/metrics.json")):
        rec = read_record(path)
        if rec.status != "ok" or rec.calibration is None:
            continue
        cfg = config_of(rec)
        key = (cfg.model.dim, cfg.train.batch_size * cfg.train.seq_len)
        cells.setdefault(key, {}).setdefault(cfg.strategy.name, []).append((rec, cfg))
    rows, t0 = [], time.perf_counter()
    for (dim, tokens), by in sorted(cells.items()):
        if "full" not in by:
            continue
        projected = {}
        for strategy, recs in by.items():
            rec, cfg = recs[0]
            cal = rec.calibration
            device = host_device(cal.matmul_flops_per_s, bw, "this CPU")
            projected[strategy] = project_time(fake_step(cfg).ops, device, cal.op_overhead_s, serial=True).step_s
            projected[strategy + "_measured"] = statistics.median(r.time.step_ms.median for r, _ in recs) / 1e3
        for strategy in by:
            if strategy == "full":
                continue
            m = projected[strategy + "_measured"] / projected["full_measured"]
            p = projected[strategy] / projected["full"]
            rows.append((dim, tokens, strategy, m, p, projected[strategy + "_measured"] * 1e3,
                         projected[strategy] * 1e3))
    errors = [abs(p - m) for *_, m, p, _, _ in rows]
    a.out.mkdir(parents=True, exist_ok=True)
    lines = ["| width | tokens per step | strategy | measured ratio to full | projected ratio | error | "
             "measured step ms | projected step ms |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {d} | {t} | {s} | {m:.2f} | {p:.2f} | {p - m:+.2f} | {ms:.2f} | {ps:.2f} |"
              for d, t, s, m, p, ms, ps in rows]
    summary = (f"{len(rows)} cells; median absolute error of the ratio {statistics.median(errors):.3f}, mean "
               f"{statistics.fmean(errors):.3f}, largest {max(errors):.3f}; the projected ratio on the same side "
               f"of 1 as the measured one in {sum((m > 1) == (p > 1) for *_, m, p, _, _ in rows)} of {len(rows)} "
               f"cells. Memory bandwidth measured here: {bw / 1e9:.1f} GB/s; projected in "
               f"{time.perf_counter() - t0:.0f} s.")
    text = "# Self-projection: this CPU projected against its own measurements\n\n" + summary + "\n\n" + \
        "\n".join(lines) + "\n"
    (a.out / "self_projection.md").write_text(text)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
