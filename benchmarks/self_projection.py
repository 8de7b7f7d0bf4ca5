"""The projection's time check: project this CPU itself over a measured sweep, cell by cell.

    python benchmarks/self_projection.py results/reference/crossover/amd-epyc-2-threads/records \
        --out results/reference/projection_check/amd-epyc-2-threads

Every measured record's configuration is run again on fake tensors (bench/project/fake.py) and
priced for this machine as one device: its matmul throughput and per-operation cost are the
medians of the records' own calibrations (bench/measure/calibrate.py; each record calibrated
once, at its sweep's start, and those single measurements spread 2x between records of one
machine), so is autograd's cost per node where the records measured it (else it is measured here),
its memory bandwidth is measured here, and on a CPU the host runs each operation itself
(bench/project/timeline.py, serial). The projected ratio t_LoRA / t_full of each cell is set
against the measured one (the median step of its repeats over full fine-tuning's) and against the
measured ratio's 95% interval as the report computes it (bench/report/explain.py): a projection
inside that interval is as close as the measurement can tell. The table, the median absolute
error and the count inside the intervals are written out. Run it on the machine that measured the
records, quiet: the bandwidth is measured here.
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


def node_cost(cals: list) -> tuple[float, str]:
    """Autograd's cost per node: the records' calibrations' median where every one measured it, else
    measured here as bench/measure/calibrate.py measures it (records older than that measurement)."""
    known = [c.node_overhead_s for c in cals if c.node_overhead_s is not None]
    if known and len(known) == len(cals):
        return statistics.median(known), f"the median of {len(known)} records' calibrations"
    from bench.measure.calibrate import calibrate

    return calibrate(torch.device("cpu"), "fp32", 64, 64, 64)["node_overhead_s"], \
        "measured here: the records predate that calibration"


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


def intervals(records: Path) -> dict[tuple, tuple[float, float]]:
    """(width, tokens, strategy) -> the measured ratio's 95% interval, as the report computes it."""
    from bench.report.explain import aggregate, settings
    from bench.report.load import load_records

    out = {}
    for _, g in settings(load_records([records])):
        for _, row in aggregate(g, host_noise=False).iterrows():
            if row.strategy == "full" or row.vs_full_lo != row.vs_full_lo:  # NaN: no interval
                continue
            cfg = config_of(read_record(Path(row.paths[0]) / "metrics.json"))
            out[(cfg.model.dim, cfg.train.batch_size * cfg.train.seq_len, row.strategy)] = (row.vs_full_lo,
                                                                                           row.vs_full_hi)
    return out


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
    cals = [rec.calibration for by in cells.values() for recs in by.values() for rec, _ in recs]
    flops, op_s = (statistics.median(c.matmul_flops_per_s for c in cals), statistics.median(c.op_overhead_s for c in cals))
    node_s, node_from = node_cost(cals)
    device = host_device(flops, bw, "this CPU")
    measured_ci = intervals(a.records)
    rows, t0 = [], time.perf_counter()
    for (dim, tokens), by in sorted(cells.items()):
        if "full" not in by:
            continue
        projected = {}
        for strategy, recs in by.items():
            projected[strategy] = project_time(fake_step(recs[0][1]).ops, device, op_s, serial=True,
                                               host_node_s=node_s).step_s
            projected[strategy + "_measured"] = statistics.median(r.time.step_ms.median for r, _ in recs) / 1e3
        for strategy in by:
            if strategy == "full":
                continue
            m = projected[strategy + "_measured"] / projected["full_measured"]
            p = projected[strategy] / projected["full"]
            rows.append((dim, tokens, strategy, m, p, measured_ci.get((dim, tokens, strategy)),
                         projected[strategy + "_measured"] * 1e3, projected[strategy] * 1e3))
    errors = [abs(p - m) for _, _, _, m, p, *_ in rows]
    inside = [lo <= p <= hi for _, _, _, _, p, ci, *_ in rows if ci for lo, hi in [ci]]
    beyond = [max(ci[0] - p, p - ci[1]) for _, _, _, _, p, ci, *_ in rows if ci and not ci[0] <= p <= ci[1]]
    a.out.mkdir(parents=True, exist_ok=True)
    lines = ["| width | tokens per step | strategy | measured ratio to full | its 95% interval | projected ratio | "
             "error | measured step ms | projected step ms |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {d} | {t} | {s} | {m:.2f} | {f'{ci[0]:.2f}-{ci[1]:.2f}' if ci else ''} | {p:.2f} | {p - m:+.2f} | "
              f"{ms:.2f} | {ps:.2f} |" for d, t, s, m, p, ci, ms, ps in rows]
    summary = (f"{len(rows)} cells; median absolute error of the ratio {statistics.median(errors):.3f}, mean "
               f"{statistics.fmean(errors):.3f}, largest {max(errors):.3f}; the projected ratio on the same side "
               f"of 1 as the measured one in {sum((m > 1) == (p > 1) for _, _, _, m, p, *_ in rows)} of {len(rows)} "
               f"cells; inside the measured ratio's 95% interval in {sum(inside)} of {len(inside)}, the others a median "
               f"{statistics.median(beyond) if beyond else float('nan'):.3f} outside it. One device: "
               f"{flops / 1e9:.0f} GFLOP/s and {op_s * 1e6:.2f} us per operation (the medians of {len(cals)} "
               f"records' calibrations), {node_s * 1e6:.2f} us per autograd node ({node_from}), memory bandwidth "
               f"measured here {bw / 1e9:.1f} GB/s; projected in "
               f"{time.perf_counter() - t0:.0f} s.")
    text = "# Self-projection: this CPU projected against its own measurements\n\n" + summary + "\n\n" + \
        "\n".join(lines) + "\n"
    (a.out / "self_projection.md").write_text(text)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
