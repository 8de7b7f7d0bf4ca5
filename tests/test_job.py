"""One job from a composed config to its record: the stages, the record and its statuses."""
import json

import pytest

from bench.job import config_key, identity, run_job, summary_line
from bench.record.store import read_record, read_steps
from tests.conftest import FAST, compose_cfg


def test_run_job_writes_a_complete_record(tmp_path):
    rec = run_job(compose_cfg(["strategy=lora_qk", "lora.rank=4", *FAST]), tmp_path)
    assert rec.status == "ok" and rec.identity.strategy == "lora_qk" and rec.identity.rank == 4
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["schema"] == 2 and on_disk["status"] == "ok"
    assert read_record(tmp_path / "metrics.json") == rec  # what is written reads back the same
    for section, keys in {
        "identity": ["config_key", "strategy", "rank", "model", "backend", "repeat"],
        "plan": ["uses_lora", "backward_stops_early", "lora_scale", "adapted", "trained"],
        "params": ["total", "trainable"],
        "time": ["wall_s", "train_s", "timed_s", "tokens_per_s", "step_ms", "forward_ms", "backward_ms",
                 "optimizer_ms"],
        "memory": ["weights_bytes", "grads_bytes", "optimizer_state_bytes", "activations_bytes",
                   "device_peak_allocated_bytes", "device_peak_reserved_bytes", "nvml_used_bytes",
                   "host_peak_rss_bytes"],
        "work": ["flops_per_step", "ops_per_step", "counted_step"],
        "loss": ["first", "last", "eval_start", "eval_end", "floor"],
        "env": ["torch", "device_name", "cuda", "cpu", "threads", "hostname", "git_commit"],
    }.items():
        assert set(keys) <= set(on_disk[section]), section
    assert set(on_disk["time"]["step_ms"]) == {"median", "mean", "p10", "p90", "std"}
    # No CUDA here: device figures are null, host RSS is measured.
    assert rec.memory.device_peak_allocated_bytes is None and rec.memory.host_peak_rss_bytes > 0
    # 2 trainable (A, B) per adapted layer, 2 adapted layers per block.
    assert rec.memory.grads_bytes == 4 * rec.params.trainable
    steps = read_steps(tmp_path / "steps.jsonl")
    assert [s["kind"] for s in steps] == ["first", "count", "profile", "warmup", "timed", "timed", "timed",
                                          "paired", "paired", "paired"]
    assert rec.attribution.step_ms > 0 and rec.attribution.categories["adapter_matmul"] > 0
    assert rec.work.counted_step == 1  # steady state: AdamW made its state on step 0
    last_timed = [s for s in steps if s["kind"] == "timed"][-1]
    assert {"step", "loss", "step_ms", "forward_ms", "backward_ms", "optimizer_ms"} <= set(last_timed)
    timed = [s["step_ms"] for s in steps if s["kind"] == "timed"]
    assert rec.time.step_ms.median == sorted(timed)[1]
    # One training clock: warm-up and timed steps, from eval_start on.
    on_clock = [s["step_ms"] for s in steps if s["kind"] in ("warmup", "timed")]
    assert rec.time.train_s == pytest.approx(sum(on_clock) / 1e3)
    assert rec.time.timed_s == pytest.approx(sum(timed) / 1e3)
    assert last_timed["elapsed_s"] == pytest.approx(rec.time.train_s)
    assert [e.elapsed_s for e in rec.eval_curve] == [0.0, pytest.approx(rec.time.train_s)]
    assert rec.loss.eval_start == rec.eval_curve[0].eval_loss and rec.loss.eval_end == rec.eval_curve[-1].eval_loss
    assert "r=4" in summary_line(rec) and "\n" not in summary_line(rec)


def test_full_and_head_only_have_no_rank(tmp_path):
    rec = run_job(compose_cfg(["strategy=head_only", "lora.rank=4", *FAST]), tmp_path)
    assert rec.status == "ok" and rec.identity.rank is None


def test_invalid_job_is_a_record_with_its_reason(tmp_path):
    rec = run_job(compose_cfg(["strategy=lora_qk", "lora.rank=999", *FAST]), tmp_path)
    assert rec.status == "invalid" and rec.outcome.key == "lora.rank"
    assert json.loads((tmp_path / "metrics.json").read_text())["outcome"]["reason"] == rec.outcome.reason


def test_phases_off_records_whole_steps_only(tmp_path):
    rec = run_job(compose_cfg(["train.phases=false", *FAST]), tmp_path)
    assert rec.time.step_ms.median > 0 and rec.time.forward_ms.median is None


@pytest.mark.parametrize("extra", [["train.precision=bf16"], ["data=random"], ["train.grad_accum=2"],
                                   ["strategy=lora_square", "model.n_kv_heads=4"], ["train.adamw_impl=fused"]])
def test_other_settings_run(tmp_path, extra):
    rec = run_job(compose_cfg([*FAST, *extra]), tmp_path)
    assert rec.status == "ok", rec.outcome and rec.outcome.reason
    t = rec.config["train"]
    assert rec.work.tokens_per_step == t["batch_size"] * t["seq_len"] * t["grad_accum"]
    if "data=random" in extra:
        assert rec.loss.floor == pytest.approx(5.545, abs=1e-3)  # ln 256


def test_config_key_drops_what_the_strategy_does_not_read():
    def node(strategy, rank, head=False):
        return {"strategy": {"name": strategy}, "lora": {"rank": rank, "include_head": head}, "train": {"lr": 1e-3}}
    assert config_key(node("full", 2)) == config_key(node("full", 8))  # full reads no lora key
    assert config_key(node("lora_qk", 2)) != config_key(node("lora_qk", 8))
    assert config_key(node("lora_qk", 8, True)) == config_key(node("lora_qk", 8, False))
    assert config_key(node("lora_all", 8, True)) != config_key(node("lora_all", 8, False))


def test_identity_names_only_the_keys_the_strategy_reads():
    base = {"model": {"name": "tiny"}, "lora": {"rank": 8, "include_head": True, "backend": "peft"}, "repeat": 2}
    full = identity({**base, "strategy": {"name": "full"}})
    assert (full.rank, full.backend, full.include_head, full.repeat) == (None, None, None, 2)
    qk = identity({**base, "strategy": {"name": "lora_qk"}})
    assert (qk.rank, qk.backend, qk.include_head) == (8, "peft", None)
    assert identity({**base, "strategy": {"name": "lora_all"}}).include_head is True
    junk = identity({"strategy": "not a mapping"})  # an invalid job still gets an identity
    assert junk.strategy is None and junk.config_key


def test_a_diverging_job_keeps_its_figures(tmp_path):
    rec = run_job(compose_cfg([*FAST, "train.lr=1e30", "train.steps=5"]), tmp_path)
    assert rec.status == "diverged" and rec.outcome.failed_step >= 2
    assert rec.work.ops_per_step > 0 and rec.memory.optimizer_state_bytes > 0  # counted before it diverged
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"
    assert read_record(tmp_path / "metrics.json").outcome.failed_step == rec.outcome.failed_step


def test_a_plain_jobs_key_is_the_key_it_had_before_the_variant_keys():
    node = {"strategy": {"name": "lora_all"}, "lora": {"rank": 8}, "train": {"steps": 3}}
    with_plain = {"strategy": {"name": "lora_all"}, "lora": {"rank": 8, "dora": False},
                  "train": {"steps": 3, "checkpointing": "none", "adamw_impl": "default"},
                  "quant": {"base": "none", "block_size": 64}}
    assert config_key(node) == config_key(with_plain)
    assert config_key({**node, "project": {"gpu": None, "host_node_us": None}}) == \
        config_key({**node, "project": {"gpu": None}})
    on = {**with_plain, "quant": {"base": "nf4", "block_size": 64}}
    assert config_key(on) != config_key(with_plain)
    assert config_key({**with_plain, "train": {"steps": 3, "checkpointing": "blocks"}}) != config_key(with_plain)
    assert config_key({**with_plain, "train": {"steps": 3, "adamw_impl": "fused"}}) != config_key(with_plain)


def test_bad_variant_input_is_an_invalid_record_naming_the_key(tmp_path):
    rec = run_job(compose_cfg([*FAST, "strategy=lora_all", "lora.dora=true", "lora.impl=fused"]), tmp_path / "a")
    assert rec.status == "invalid" and rec.outcome.key == "lora.dora" and "\n" not in rec.outcome.reason
    rec = run_job(compose_cfg([*FAST, "strategy=lora_all", "train.checkpointing=everything"]), tmp_path / "b")
    assert rec.status == "invalid" and rec.outcome.key == "train.checkpointing"
    rec = run_job(compose_cfg([*FAST, "train.adamw_impl=apex"]), tmp_path / "c")
    assert rec.status == "invalid" and rec.outcome.key == "train.adamw_impl" and "fused" in rec.outcome.reason
