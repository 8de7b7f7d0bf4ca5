"""Hold the projection to published GPU runs: project every row of results/reference/published/runs.json
and print, beside each published figure, the projected one and its relative error.

    python benchmarks/published_check.py [--out results/reference/published/check.md] [--only ID,...]

Each row names its source file and commit, its setting and its role: `calibration` rows may set a
constant of the projection, `check` rows may not, and the error that counts is the check rows'.
Nothing here is fitted: the projection runs as `project.gpu=...` runs for a user, and this prints
how far it is from what was published. The published figures are recomputed from the transcribed
per-interval values: ms per step = the sum of the logged train time over the intervals / steps (the
evaluation excluded), allocated = the mean of the per-interval mean allocated after each step.

Stated limits of the comparison (not of the source): the projection builds lora-bench's native LoRA
layer, not PEFT's (PEFT is refused under fake tensors: bench/project/job.py), with PEFT's fp32
adapters under the bf16 base (lora.adapter_dtype=fp32); PEFT's "allocated after the step" is read
while its loop holds the step's outputs, whose logits and KV cache are added to the projected
states (the table shows both); its reserved holds no CUDA context, nor does the compared reserve; every sequence is
the mean real length (the source pads each batch to its longest, whose lengths it does not
publish); and the host's cost per operation is the projection's fixed GPU host constant
(bench/project/job.py) unless --host-op-us is given. Rows beyond PEFT's, each a check row, are in
other_runs.json; the medians of all check rows go to error.json, which every report quotes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNS = ROOT / "results" / "reference" / "published" / "runs.json"


def published(run: dict) -> dict:
    """The row's published figures, recomputed from its transcribed intervals."""
    s = run["setting"]
    times = run["train_time_s_per_250_steps"]
    alloc = run["mem_allocated_avg_bytes_per_250_steps"]
    return {"ms": 1e3 * sum(times) / s["steps"], "tokens_per_seq": s["train_total_tokens"] / s["steps"] / s["batch_size"],
            "allocated": statistics.fmean(alloc), "reserved": run["reserved_avg_bytes"]}


def overrides(run: dict, host_op_us: float | None) -> list[str]:
    s = run["setting"]
    seq = round(published(run)["tokens_per_seq"])
    out = [f"model={s['preset']}", f"strategy={s['strategy']}", "data=random", f"train.batch_size={s['batch_size']}",
           f"train.seq_len={seq}", "train.precision=fp32", "project.dtype=bf16", f"project.gpu={s['gpu']}",
           f"train.grad_clip={s['grad_clip']}", f"train.weight_decay={s['weight_decay']}"]
    if "rank" in s:
        out += [f"lora.rank={s['rank']}", f"lora.alpha={s['alpha']}", f"lora.dora={str(s['dora']).lower()}",
                f"lora.adapter_dtype={'fp32' if s.get('autocast_adapter_dtype') else 'base'}"]
    if host_op_us is not None:
        out.append(f"project.host_op_us={host_op_us}")
    return out


def composed(bench_overrides: list[str]):
    """A job, composed as the command line composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*bench_overrides, "train.eval_batches=1", "train.progress=false"])


def project_overrides(bench_overrides: list[str], work: Path, name: str):
    """A projected record's projection for these bench.run overrides."""
    from bench.job import run_job

    rec = run_job(composed(bench_overrides), work / name)
    if rec.status != "ok":
        raise SystemExit(f"{name}: the projection ended {rec.status}: {rec.outcome.reason if rec.outcome else ''}")
    return rec.projection


def held_by_the_loop(run: dict) -> int:
    """Bytes PEFT's training loop still holds when it reads memory_allocated() after the step
    (method_comparison/MetaMathQA/run.py): `outputs`, whose logits are batch x tokens x vocab in
    the model's bf16 (transformers' loss upcasts its own copy, which is freed), the loss, and the
    KV cache transformers builds in training too (config.use_cache is true for Llama 3.2 and only
    checkpointing turns it off; DynamicCache keeps each layer's bf16 keys and values)."""
    s = run["setting"]
    m = composed(overrides(run, None)).model
    tokens = s["batch_size"] * round(published(run)["tokens_per_seq"])
    kv = 0 if s["checkpointing"] else 2 * m.n_layers * tokens * m.n_kv_heads * (m.dim // m.n_heads) * 2
    return tokens * m.vocab_size * 2 + 4 + kv


def project(run: dict, host_op_us: float | None, work: Path) -> dict:
    from bench.project.job import CUDA_CONTEXT

    p = project_overrides(overrides(run, host_op_us), work, run["id"])
    d = p.devices[0]
    states = p.weights_bytes + p.grads_bytes + p.optimizer_state_bytes
    # memory_reserved() counts the allocator's segments only: the CUDA context is not in it
    return {"ms": d.step_ms, "bound": d.bound, "host_op_us": d.host_op_us, "states": states,
            "allocated": states + held_by_the_loop(run), "reserved": d.reserved_bytes - CUDA_CONTEXT,
            "seconds": p.seconds}


GRID = [round(0.20 + 0.01 * i, 2) for i in range(81)]  # achieved fractions tried: 0.20 to 1.00


def _step_s(c, m, host, host_total: float, e_c: float, e_m: float) -> float:
    """bench/project/timeline.py's step for arrays of kernels (compute-bound and memory-bound
    times at the peaks, the host's issue time of each): the device runs kernel i at
    max(issued_i, end of i-1), so it ends at S_n + max_i(host_i - S_(i-1)), S the cumulative kernel time."""
    import numpy as np

    d = np.maximum(c / e_c, m / e_m)
    s = np.cumsum(d)
    return float(max(host_total, s[-1] + np.max(host - (s - d))))


def fit(runs: list[dict]) -> dict:
    """The achieved fractions of matmul peak and bandwidth that minimise the squared log error of the
    step time over the calibration rows (a grid over GRID); written to bench/project/achieved.json."""
    import numpy as np

    from bench.config import load_config
    from bench.project.devices import ACHIEVED, table
    from bench.project.fake import fake_step
    from bench.project.job import host_costs
    from bench.project.timeline import issue_s

    ACHIEVED.unlink(missing_ok=True)  # the fit starts from the datasheet peaks
    calib = [r for r in runs if r["role"] == "calibration"]
    arrays = []
    for run in calib:
        cfg = load_config(composed(overrides(run, None)))
        dev, (op_s, node_s, _) = table()[run["setting"]["gpu"]], host_costs(cfg)
        step = fake_step(cfg, foreach=True)
        kernels = step.ops
        host = np.cumsum([issue_s(op, dev, op_s, node_s) for op in kernels])
        keep = np.array([op.kernel for op in kernels])
        c = np.array([op.flops / dev.matmul_flops[op.dtype] for op in kernels])[keep]
        m = np.array([op.bytes / dev.bandwidth for op in kernels])[keep]
        arrays.append((c, m, host[keep], host[-1], published(run)["ms"] / 1e3))
    loss = {(e_c, e_m): sum(np.log(_step_s(c, m, h, total, e_c, e_m) / pub) ** 2 for c, m, h, total, pub in arrays)
            for e_c in GRID for e_m in GRID}
    (e_c, e_m), best = min(loss.items(), key=lambda kv: kv[1])
    # The reserve is the allocator's, replayed (bench/project/allocator.py): nothing of it is fitted.
    out = {"matmul": e_c, "bandwidth": e_m, "fitted_on": [r["id"] for r in calib],
           "source": f"fitted on {len(calib)} calibration rows of results/reference/published/runs.json by "
                     f"benchmarks/published_check.py --fit, {time.strftime('%Y-%m-%d')}",
           "objective": f"sum of squared log errors of the step time, {best:.4f} at the best point of a "
                        f"{len(GRID)} x {len(GRID)} grid"}
    ACHIEVED.write_text(json.dumps(out, indent=1) + "\n")
    out["per_gpu"] = fit_per_gpu()
    ACHIEVED.write_text(json.dumps(out, indent=1) + "\n")
    return out


def fit_per_gpu() -> dict:
    """Each GPU's own matmul fraction, on its calibration rows in other_runs.json (throughput rows), the
    bandwidth fraction the PEFT rows fitted kept: a GPU without such rows takes the L40S's."""
    import dataclasses

    import numpy as np
    from bench.config import load_config
    from bench.project import links
    from bench.project.devices import table
    from bench.project.fake import fake_step
    from bench.project.job import host_costs
    from bench.project.timeline import project_time

    rows: dict[str, list] = {}
    for run in (r for r in json.loads(OTHERS.read_text())["runs"] if r["role"] == "calibration"):
        cfg = load_config(composed(run["overrides"]))
        p, gpu = cfg.project, cfg.project.gpu[0]
        fab = links.fabric(gpu, p.devices, p.nodes, p.link, p.network) if p.devices > 1 else None
        tokens = cfg.train.batch_size * (p.mean_seq_len or cfg.train.seq_len)
        ops = fake_step(cfg, foreach=True, world=p.devices).ops
        rows.setdefault(gpu, []).append((ops, table()[gpu], fab, host_costs(cfg)[:2], tokens, run))
    out = {}
    for gpu, these in rows.items():
        def loss(e: float) -> float:
            return sum(np.log(tokens / project_time(ops, dataclasses.replace(dev, matmul_efficiency=e), host[0],
                                                    fabric=fab, host_node_s=host[1]).step_s
                              / run["published"]["tokens_per_s_per_gpu"]) ** 2
                       for ops, dev, fab, host, tokens, run in these)
        errors = {e: loss(e) for e in GRID}
        best = min(errors, key=errors.get)
        ids = [t[-1]["id"] for t in these]
        out[gpu] = {"matmul": best, "fitted_on": ids,
                    "source": f"fitted on {len(ids)} calibration row(s) of results/reference/published/other_runs.json "
                              f"({', '.join(ids)}) by benchmarks/published_check.py --fit, {time.strftime('%Y-%m-%d')}",
                    "objective": f"squared log error of the throughput, {errors[best]:.4f} at the best of {len(GRID)}"}
    return out


def _err(pred: float, pub: float) -> str:
    return f"{100 * (pred / pub - 1):+.0f}%"


OTHERS = ROOT / "results" / "reference" / "published" / "other_runs.json"
ERROR = ROOT / "results" / "reference" / "published" / "error.json"  # what the report states beside each projection


def other_row(run: dict, work: Path) -> tuple[str, float, float, str]:
    """(what is compared, published, PROJECTED, unit) for one row of other_runs.json."""
    pub = run["published"]
    p = project_overrides(run["overrides"], work, run["id"])
    d = p.devices[0]
    if "peak_allocated_bytes" in pub:
        return "peak allocated GB per GPU", pub["peak_allocated_bytes"] / 1e9, p.peak_bytes / 1e9, "memory"
    if "max_reserved_bytes" in pub:  # torch.cuda.max_memory_reserved holds no CUDA context
        from bench.project.job import CUDA_CONTEXT

        return ("max reserved GB per GPU", pub["max_reserved_bytes"] / 1e9, (d.reserved_bytes - CUDA_CONTEXT) / 1e9,
                "reserve")
    if "tokens_per_s_per_gpu" in pub:
        value = {o.split("=")[0]: o.split("=")[1] for o in run["overrides"]}
        tokens = int(value["train.batch_size"]) * int(value["train.seq_len"])
        return "tokens/s per GPU", pub["tokens_per_s_per_gpu"], tokens / (d.step_ms / 1e3), "step"
    base = project_overrides(run["baseline_overrides"], work, run["id"] + "-baseline")
    return run["compared"], pub["ratio"], d.step_ms / base.devices[0].step_ms, "ratio"


def others(work: Path, step_errors: list[float], reserve_errors: list[float]) -> list[str]:
    """The table of other_runs.json: every row a check row."""
    runs = json.loads(OTHERS.read_text())["runs"]
    lines = ["", f"Other published runs ({OTHERS.relative_to(ROOT)}): the calibration rows set their GPU's own matmul "
                 "fraction (bench/project/achieved.json, per_gpu); the errors below are the check rows'. What each "
                 "source does not publish, and the projection assumed, is listed beside it.", "",
             "| row | role | source | compared | published | PROJECTED | error | assumed |", "|---|---|---|---|---|---|---|---|"]
    errors: dict[str, list[float]] = {"step": list(step_errors), "reserve": list(reserve_errors), "memory": [],
                                      "ratio": []}
    for run in runs:
        what, pub, pred, kind = other_row(run, work)
        if run["role"] == "check":  # a calibration row set a constant: its error is not the projection's
            errors[kind].append(abs(pred / pub - 1))
        src = run["source"].get("url") or f"{run['source']['repo']} {run['source']['path']}"
        lines.append(f"| {run['id']} | {run['role']} | {src} | {what} | {pub:.3g} | {pred:.3g} | {_err(pred, pub)} | "
                     f"{'; '.join(run['assumed'])} |")
    lines.append("")
    for kind, errs in errors.items():
        if errs:
            lines.append(f"- Median absolute error of the {kind} rows: {100 * statistics.median(errs):.0f}% over "
                         f"{len(errs)} rows" + (" (PEFT's check rows above and the throughput rows here)" if kind == "step"
                                                else "") + ".")
    ERROR.write_text(json.dumps({k: {"median_abs_error": statistics.median(v), "rows": len(v)}
                                 for k, v in errors.items() if v}, indent=1) + "\n")
    return lines


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    ap.add_argument("--only", default=None, help="comma-separated row ids")
    ap.add_argument("--host-op-us", type=float, default=None, help="the host's cost per operation, us (default: bench/project/job.py's GPU_HOST_OP_US)")
    ap.add_argument("--fit", action="store_true", help="first fit the achieved fractions on the calibration rows "
                                                       "(writes bench/project/achieved.json)")
    args = ap.parse_args(argv)
    runs = json.loads(RUNS.read_text())["runs"]
    fitted = fit(runs) if args.fit else None
    if args.only:
        runs = [r for r in runs if r["id"] in args.only.split(",")]
    rows, got = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            pub, pred = published(run), project(run, args.host_op_us, Path(tmp))
            got[run["id"]] = (pub, pred)
            s = run["setting"]
            what = s["strategy"] + (f" r{s['rank']}" + (" DoRA" if s.get("dora") else "") if "rank" in s else "")
            rows.append(f"| {run['id']} | {run['role']} | {what} | {s['gpu']} | {pub['ms']:.1f} | {pred['ms']:.1f} "
                        f"({pred['bound']}-bound, host {pred['host_op_us']:.1f} us/op) | {_err(pred['ms'], pub['ms'])} | "
                        f"{pub['allocated'] / 1e9:.2f} | {pred['states'] / 1e9:.2f} | {_err(pred['states'], pub['allocated'])} | "
                        f"{pred['allocated'] / 1e9:.2f} | {_err(pred['allocated'], pub['allocated'])} | "
                        f"{pub['reserved'] / 1e9:.2f} | {pred['reserved'] / 1e9:.2f} | {_err(pred['reserved'], pub['reserved'])} |")
    head = ["| row | role | job | GPU | published ms/step | PROJECTED ms/step | error | published allocated GB "
            "(mean, after the step) | PROJECTED weights+grads+optimizer GB | error | PROJECTED allocated after the step "
            "GB (those + the logits and KV cache PEFT's loop holds) | error | published reserved GB (mean) | PROJECTED reserve GB "
            "(the allocator's, no CUDA context) | error |", "|" + "---|" * 15]
    from bench.project.devices import achieved

    fit_now = achieved()
    constants = ("the datasheet peaks (no achieved fractions fitted)" if fit_now is None else
                 f"achieved fractions {fit_now['matmul']:.2f} of the matmul peak and {fit_now['bandwidth']:.2f} of the "
                 f"bandwidth, {fit_now['source']}")
    command = "python benchmarks/published_check.py" + (" --fit" if fitted else "")
    lines = [f"Projection against published runs ({RUNS.relative_to(ROOT)}), {time.strftime('%Y-%m-%d')}; PROJECTED "
             f"figures from `{command}` on this machine, at {constants}.", "", *head, *rows, ""]
    full = next((v for k, v in got.items() if k.endswith("-full")), None)
    for k, (pub, pred) in got.items():
        if full is not None and not k.endswith("-full"):
            lines.append(f"- {k}: ratio to full fine-tuning published {pub['ms'] / full[0]['ms']:.3f}, PROJECTED "
                         f"{pred['ms'] / full[1]['ms']:.3f} ({_err(pred['ms'] / full[1]['ms'], pub['ms'] / full[0]['ms'])})")
    checks = [abs(pred["ms"] / pub["ms"] - 1) for k, (pub, pred) in got.items()
              if next(r for r in runs if r["id"] == k)["role"] == "check"]
    calib = [abs(pred["ms"] / pub["ms"] - 1) for k, (pub, pred) in got.items()
             if next(r for r in runs if r["id"] == k)["role"] == "calibration"]
    # nothing is fitted to a reserve (the allocator is replayed): every row's is a check
    reserve = [abs(pred["reserved"] / pub["reserved"] - 1) for pub, pred in got.values()]
    fitted_to = "the achieved fractions were fitted to them" if fit_now is not None else "no constant was fitted to them"
    lines.append(f"- Median absolute step-time error: check rows {100 * statistics.median(checks):.0f}% over {len(checks)} "
                 f"rows; calibration rows {100 * statistics.median(calib):.0f}% over {len(calib)} ({fitted_to})."
                 if checks and calib else "- Too few rows for a median.")
    for role in ("calibration", "check"):
        these = [(pub, pred) for k, (pub, pred) in got.items() if next(r for r in runs if r["id"] == k)["role"] == role]
        if these:
            errs = {k: statistics.median(abs(pred[k] / pub["allocated"] - 1) for pub, pred in these)
                    for k in ("states", "allocated")}
            lines.append(f"- Memory after the step, {role} rows: weights+grads+optimizer {100 * errs['states']:.0f}% "
                         f"from the published allocated (median over {len(these)}); with the logits and KV cache PEFT's loop holds, "
                         f"{100 * errs['allocated']:.0f}%.")
    if reserve:
        lines.append(f"- Reserve: the caching allocator replayed (bench/project/allocator.py), no constant fitted to a "
                     f"reserve, so every row's is a check: median absolute error {100 * statistics.median(reserve):.0f}% "
                     f"over {len(reserve)} rows.")
    if not args.only:
        with tempfile.TemporaryDirectory() as tmp:
            lines += others(Path(tmp), step_errors=checks, reserve_errors=reserve)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
