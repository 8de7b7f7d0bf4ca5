import json

import pytest

from bench.cli import group_options
from bench.record.store import read_steps
from bench.job import run_job, summary_line
from bench.record.store import read_record
from bench.run import exit_code
from tests.conftest import FAST, ROOT, compose_cfg, run_cli

GROUPS = {g: group_options(g) for g in ("strategy", "model", "data")}


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_composes_and_validates(cfg_of, group, option):
    extra = {"jsonl": ["data.path=/dev/null"], "hf": ["model.path=/some/local/model"]}.get(option, [])
    cfg = cfg_of(f"{group}={option}", *extra)
    assert getattr(cfg, group).name == option


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
    assert [s["kind"] for s in steps] == ["first", "count", "warmup", "timed", "timed", "timed"]
    assert rec.work.counted_step == 1  # steady state: AdamW made its state on step 0
    assert {"step", "loss", "step_ms", "forward_ms", "backward_ms", "optimizer_ms"} <= set(steps[-1])
    timed = [s["step_ms"] for s in steps if s["kind"] == "timed"]
    assert rec.time.step_ms.median == sorted(timed)[1]
    # One training clock: warm-up and timed steps, from eval_start on.
    on_clock = [s["step_ms"] for s in steps if s["kind"] in ("warmup", "timed")]
    assert rec.time.train_s == pytest.approx(sum(on_clock) / 1e3)
    assert rec.time.timed_s == pytest.approx(sum(timed) / 1e3)
    assert steps[-1]["elapsed_s"] == pytest.approx(rec.time.train_s)
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


def test_exit_codes():
    assert exit_code([("ok", False)]) == 0
    assert exit_code([("invalid", False)]) == 2
    assert exit_code([("ok", True), ("invalid", True), ("diverged", True)]) == 0  # findings
    assert exit_code([("ok", True), ("error", True)]) == 1
    assert exit_code([("ok", True), ("interrupted", True)]) == 130


def test_real_multirun_writes_one_record_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "strategy=full,lora_all,lora_qk,lora_last", "lora.rank=2,8", *FAST,
                   f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    records = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert len(records) == 8
    # full ignores lora.rank: its second job is the same measurement, run once and reported once.
    assert records[1]["status"] == "duplicate" and records[1]["outcome"]["same_as"] == str(sweep / "0")
    assert [records[i]["status"] for i in sorted(records) if i != 1] == ["ok"] * 7
    ids = [r["identity"] for r in records.values()]
    assert sorted({(r["strategy"], r["rank"]) for r in ids if r["rank"]}) == \
        [(s, r) for s in ("lora_all", "lora_last", "lora_qk") for r in (2, 8)]
    assert res.stdout.count("[ok]") == 7 and res.stdout.count("[skip]") == 1


@pytest.mark.parametrize("args, needle", [
    (["strategy=lora_everything"], "strategy='lora_everything' is not a known strategy"),
    (["-m", "model=tiny,gpt5"], "model='gpt5' is not a known model"),
    (["train.stepz=3"], "train.stepz"),
    (["lora.rank=0"], "lora.rank: must be >= 1"),
    (["lora.rank=[1"], "lora.rank"),
])
def test_bad_overrides_fail_in_one_line(tmp_path, args, needle):
    res = run_cli([*args, *FAST, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, timeout=120)
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and needle in err[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.parametrize("extra", [["train.precision=bf16"], ["data=random"], ["train.grad_accum=2"],
                                   ["strategy=lora_square", "model.n_kv_heads=4"]])
def test_other_settings_run(tmp_path, extra):
    rec = run_job(compose_cfg([*FAST, *extra]), tmp_path)
    assert rec.status == "ok", rec.outcome and rec.outcome.reason
    t = rec.config["train"]
    assert rec.work.tokens_per_step == t["batch_size"] * t["seq_len"] * t["grad_accum"]
    if "data=random" in extra:
        assert rec.loss.floor == pytest.approx(5.545, abs=1e-3)  # ln 256
