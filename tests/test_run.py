"""The command line: sweeps through Hydra, one record per job, and the exit codes."""
import json

from bench.run import exit_code
from tests.conftest import FAST, ROOT, run_cli


def test_exit_codes_follow_one_rule_for_runs_and_sweeps():
    assert exit_code([("ok", False)]) == 0
    assert exit_code([("diverged", False)]) == 0 and exit_code([("oom", False)]) == 0  # findings
    assert exit_code([("invalid", False)]) == 2
    assert exit_code([("invalid", True), ("invalid", True)]) == 2  # nothing measured: bad input
    assert exit_code([("ok", True), ("invalid", True), ("diverged", True)]) == 0
    assert exit_code([("ok", True), ("error", True)]) == 1 and exit_code([("error", False)]) == 1
    assert exit_code([("ok", True)], report_ok=False) == 1
    assert exit_code([("ok", True), ("interrupted", True)]) == 130
    assert exit_code([("ok", True)], stopped=True) == 130  # a signal after the last job
    assert exit_code([]) == 1


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




def test_full_fine_tuning_runs_once_in_a_peft_sweep_and_says_the_lora_keys_did_not_apply(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "strategy=full,lora_all", "lora.backend=peft", *FAST, f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    records = {r["identity"]["strategy"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/metrics.json"))}
    assert records["full"]["status"] == "ok" and records["lora_all"]["status"] == "ok"
    assert records["full"]["identity"]["backend"] is None
    assert any("do not apply to strategy=full" in n for n in records["full"]["plan"]["notes"])
    assert records["lora_all"]["identity"]["backend"] == "peft"
    md = (sweep / "report" / "report.md").read_text()
    # A verdict, unless a busy CI runner disturbed the jobs: then the report says why it has none.
    assert "Fastest:" in md or "## Warning: jobs measured on a busy machine" in md
