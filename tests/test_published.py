"""The published runs (results/reference/published/runs.json) and what benchmarks/published_check.py
makes of them: each row is sourced, marked, and composes into a valid projection."""
import importlib.util
import json
import sys

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("published_check", ROOT / "benchmarks" / "published_check.py")
check = importlib.util.module_from_spec(spec)
sys.modules["published_check"] = check
spec.loader.exec_module(check)
RUNS = json.loads(check.RUNS.read_text())["runs"]


def test_every_row_names_its_source_its_role_and_a_whole_run():
    assert len({r["id"] for r in RUNS}) == len(RUNS)
    for r in RUNS:
        src = r["source"]
        assert src["repo"] and src["path"].endswith(".json") and len(src["commit"]) == 40
        assert r["role"] in ("calibration", "check")
        steps, interval = r["setting"]["steps"], 250
        assert len(r["train_time_s_per_250_steps"]) == len(r["mem_allocated_avg_bytes_per_250_steps"]) == steps // interval
    assert {r["role"] for r in RUNS} == {"calibration", "check"}


def test_the_published_figures_are_recomputed_from_the_intervals():
    full = next(r for r in RUNS if r["id"] == "peft-l40s-llama3b-full")
    pub = check.published(full)
    assert pub["ms"] == pytest.approx(1e3 * sum(full["train_time_s_per_250_steps"]) / 5000)
    assert round(pub["ms"], 1) == 362.5 and pub["tokens_per_seq"] == pytest.approx(4198051 / 5000 / 4)
    lora = check.published(next(r for r in RUNS if r["id"] == "peft-l40s-llama3b-lora-qv-r32"))
    assert round(lora["ms"], 1) == 123.9 and lora["allocated"] == pytest.approx(6.92e9, rel=1e-3)


def test_the_loops_held_outputs_are_the_logits_the_loss_and_the_kv_cache():
    """PEFT's loop reads memory_allocated() while `outputs` lives: batch x tokens x vocab bf16 logits, the
    loss, and the KV cache (28 layers x keys and values x 8 heads of 128, bf16)."""
    lora = next(r for r in RUNS if r["id"] == "peft-l40s-llama3b-lora-qv-r32")
    tokens = 4 * 210  # 839.6 tokens a step: 210 a sequence
    assert check.held_by_the_loop(lora) == tokens * 128256 * 2 + 4 + 2 * 28 * tokens * 8 * 128 * 2
    assert "lora.adapter_dtype=fp32" in check.overrides(lora, None)  # PEFT's autocast_adapter_dtype
    full = next(r for r in RUNS if r["id"] == "peft-l40s-llama3b-full")
    assert not any(o.startswith("lora.") for o in check.overrides(full, None))


@pytest.mark.parametrize("run", RUNS, ids=[r["id"] for r in RUNS])
def test_every_row_composes_into_a_valid_projection(run, cfg_of):
    cfg = cfg_of(*check.overrides(run, None))
    s = run["setting"]
    assert cfg.project.gpu == [s["gpu"]] and cfg.project.dtype == "bf16" and cfg.strategy.name == s["strategy"]
    assert cfg.train.seq_len == 210 and cfg.train.batch_size == s["batch_size"]
    if "rank" in s:
        assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dora) == (s["rank"], s["alpha"], s["dora"])


def test_the_fits_vectorised_step_is_the_timelines():
    """The fit prices thousands of grid points with the closed form; it must equal
    bench/project/timeline.py's step on the same kernels, host- or device-bound."""
    import random

    import numpy as np

    from bench.project.devices import Device
    from bench.project.fake import Op
    from bench.project.timeline import issue_s, project_time

    rng = random.Random(0)
    ops = [Op("k", rng.choice([0, int(1e9), int(3e7)]), rng.choice([0, 10**6, 10**8]), rng.random() > 0.2, "bf16",
              nodes=rng.choice([0.0, 0.7])) for _ in range(400)] + [Op("view", 0, 0, False, "bf16")] * 50
    for e_c, e_m, op_s in ((1.0, 1.0, 2e-6), (0.6, 0.7, 2e-6), (0.5, 0.9, 80e-6)):
        dev = Device("d", 2**30, {"bf16": 1e14}, 1e12, "test", 4e-6, e_c, e_m)
        host = np.cumsum([issue_s(op, dev, op_s, 2e-6) for op in ops])  # the host ends after the last kernel
        keep = np.array([op.kernel for op in ops])
        c = np.array([op.flops / 1e14 for op in ops])[keep]
        m = np.array([op.bytes / 1e12 for op in ops])[keep]
        assert check._step_s(c, m, host[keep], host[-1], e_c, e_m) == \
            pytest.approx(project_time(ops, dev, op_s, host_node_s=2e-6).step_s, rel=1e-9)


OTHERS = json.loads(check.OTHERS.read_text())["runs"]


@pytest.mark.parametrize("run", OTHERS, ids=[r["id"] for r in OTHERS])
def test_every_other_row_is_sourced_marked_and_composes(run, cfg_of):
    src = run["source"]
    assert run["role"] in ("check", "calibration") and run["assumed"] and run["setting"]
    assert run["role"] == "check" or "tokens_per_s_per_gpu" in run["published"]  # what the per-GPU fit reads
    assert src.get("url", "").startswith("https://github.com/") or (src["repo"] and src["path"] and len(src["commit"]) == 40)
    (kind,) = run["published"]
    assert kind in ("peak_allocated_bytes", "max_reserved_bytes", "tokens_per_s_per_gpu", "ratio")
    assert cfg_of(*run["overrides"]).project.gpu
    if kind == "ratio":
        assert run["compared"] and cfg_of(*run["baseline_overrides"]).project.gpu


def test_the_other_rows_span_sources_gpus_and_sizes():
    rows = RUNS + OTHERS
    sources = {r["source"].get("repo") or r["source"]["url"].split("/issues")[0] for r in rows}
    assert len(rows) >= 15 and len(sources) >= 4
    gpus = {o.split("=")[1] for r in OTHERS for o in r["overrides"] if o.startswith("project.gpu=")} | {"L40S"}
    assert len(gpus) >= 3
