"""The pretrain stage: its own record and clock, run once per base."""
import time

from bench import pretrain as stage
from bench.job import run_job
from tests.conftest import FAST, compose_cfg


def test_base_config_is_full_finetuning_on_the_unshifted_language(cfg_of):
    cfg = cfg_of("strategy=lora_qk", "data.shift=0.25", "model.checkpoint=auto", "pretrain.steps=7",
                 "lora.lr_ratio=4", "train.precision=bf16")
    base = stage.base_config(cfg)
    assert (base.strategy.name, base.data.shift, base.model.checkpoint, base.lora.lr_ratio) == ("full", 0.0, None, 1.0)
    assert (base.train.steps, base.train.precision, base.train.grad_accum) == (7, "fp32", 1)


def test_auto_base_is_a_stage_before_the_job_and_outside_its_clock(tmp_path, monkeypatch):
    real = stage.pretrain

    def slow(cfg, path):  # a pretraining that takes at least 8 s: far longer than the job itself
        meta = real(cfg, path)
        time.sleep(8.0)
        return {**meta, "wall_s": meta["wall_s"] + 8.0}

    monkeypatch.setattr(stage, "pretrain", slow)
    overrides = [*FAST, "model.checkpoint=auto", "pretrain.steps=5", "pretrain.batch_size=2",
                 f"pretrain.dir={tmp_path / 'bases'}"]
    rec = run_job(compose_cfg(overrides), tmp_path / "a")
    assert rec.status == "ok" and rec.pretrain["steps"] == 5 and rec.pretrain["wall_s"] >= 8.0
    assert rec.time.wall_s < 8.0  # the job's clock starts after the stage
    again = run_job(compose_cfg(overrides), tmp_path / "b")
    assert again.pretrain is None and again.plan.checkpoint == rec.plan.checkpoint  # made once, reused
