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


@pytest.mark.parametrize("run", RUNS, ids=[r["id"] for r in RUNS])
def test_every_row_composes_into_a_valid_projection(run, cfg_of):
    cfg = cfg_of(*check.overrides(run, None))
    s = run["setting"]
    assert cfg.project.gpu == [s["gpu"]] and cfg.project.dtype == "bf16" and cfg.strategy.name == s["strategy"]
    assert cfg.train.seq_len == 210 and cfg.train.batch_size == s["batch_size"]
    if "rank" in s:
        assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dora) == (s["rank"], s["alpha"], s["dora"])
