"""The paired baseline: full fine-tuning stepped in turn with a LoRA job, after the job's own figures."""
import json

import numpy as np
import pytest

from bench.job import run_job
from bench.record.store import read_steps
from tests.conftest import FAST, compose_cfg


def test_a_lora_job_steps_in_turn_with_full_fine_tuning_and_records_every_pair(tmp_path):
    rec = run_job(compose_cfg([*FAST, "strategy=lora_all", "train.paired_steps=6"]), tmp_path)
    assert rec.status == "ok"
    p = rec.paired
    assert p.pairs == 6 and p.skipped is None and p.baseline == "full" and p.order == "ABBA"
    rows = [r for r in read_steps(tmp_path / "steps.jsonl") if r["kind"] == "paired"]
    assert [r["first"] for r in rows] == ["own", "base"] * 3  # who goes first alternates
    assert p.ratio == pytest.approx(np.median([r["step_ms"] / r["base_ms"] for r in rows]))
    assert p.own_ms.median == pytest.approx(np.median([r["step_ms"] for r in rows]))
    assert all(np.isfinite(r["loss"]) for r in rows)
    # The record on disk reads back with the section.
    assert json.loads((tmp_path / "metrics.json").read_text())["paired"]["pairs"] == 6


def test_the_baseline_leaves_the_jobs_own_figures_alone(tmp_path):
    on = run_job(compose_cfg([*FAST, "strategy=lora_qk", "train.paired_steps=4"]), tmp_path / "on")
    off = run_job(compose_cfg([*FAST, "strategy=lora_qk", "train.paired_steps=0"]), tmp_path / "off")
    assert off.paired.skipped == "train.paired_steps=0" and off.paired.pairs == 0
    for name in ("weights_bytes", "grads_bytes", "optimizer_state_bytes", "activations_bytes"):
        assert getattr(on.memory, name) == getattr(off.memory, name), name
    assert on.params == off.params and on.work.flops_per_step == off.work.flops_per_step
    assert on.loss.eval_end == off.loss.eval_end  # evaluated before the pairs trained it further
    assert on.time.timed_steps == off.time.timed_steps == 3


def test_full_fine_tuning_is_the_baseline_and_a_compiled_job_says_why_it_has_none(tmp_path):
    assert run_job(compose_cfg([*FAST, "strategy=full"]), tmp_path / "full").paired is None
    rec = run_job(compose_cfg([*FAST, "strategy=lora_qk", "train.compile=true"]), tmp_path / "compiled")
    assert rec.status == "ok" and rec.paired.pairs == 0 and "compiled" in rec.paired.skipped
    assert not [r for r in read_steps(tmp_path / "compiled" / "steps.jsonl") if r["kind"] == "paired"]


def test_the_baseline_is_plain_full_fine_tuning_and_checkpointed_full_is_paired_with_it(tmp_path, cfg_of):
    from bench.measure.paired import baseline_config, is_baseline

    cfg = cfg_of("strategy=lora_all", "quant.base=nf4", "lora.dora=true", "train.checkpointing=blocks")
    base = baseline_config(cfg)
    assert base.strategy.name == "full" and base.quant.base == "none" and base.train.checkpointing == "none"
    assert is_baseline(base) and not is_baseline(cfg_of("strategy=full", "train.checkpointing=blocks"))
    rec = run_job(compose_cfg([*FAST, "strategy=full", "train.checkpointing=blocks"]), tmp_path)
    assert rec.status == "ok" and rec.paired.pairs == 3 and rec.paired.skipped is None
