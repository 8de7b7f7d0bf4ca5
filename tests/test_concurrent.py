"""Two sweeps into one hydra.sweep.dir at once (a user who starts the same command twice): each job
directory has one owner at a time (bench/record/claim.py), so every record is whole, measured once
and counted once, and nothing is set aside as replaced."""
import json
import subprocess
import sys

from bench.record.claim import CLAIM
from bench.record.store import read_record, read_steps
from bench.report.load import load_records
from tests.conftest import FAST, ROOT


def test_two_sweeps_into_one_directory_measure_each_job_once_and_mix_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "bench.run", "-m", "strategy=full,lora_all,lora_qk,lora_last", *FAST,
            "train.profile=false", f"hydra.sweep.dir={sweep}"]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    recs = {}
    for job in sorted(sweep.glob("[0-9]*")):
        rec = read_record(job / "metrics.json")  # whole JSON, typed
        assert rec.status == "ok", (job, rec.status, rec.outcome)
        steps = read_steps(job / "steps.jsonl")
        timed = [r["step_ms"] for r in steps if r["kind"] == "timed"]
        assert len(timed) == 3 and sorted(timed)[1] == rec.time.step_ms.median  # one writer's steps, matching
        assert not list(job.glob("*.replaced-*")) and not list(job.glob("*.part")) and not (job / CLAIM).exists()
        recs[job.name] = rec.identity.strategy
    assert sorted(recs.values()) == ["full", "lora_all", "lora_last", "lora_qk"]
    # Each job was measured by exactly one of the two: the other said it skipped it.
    said = "".join(o + e for o, e in outs)
    assert said.count("[ok]") == 4, said[-3000:]
    assert said.count("being measured by another process") + said.count("already measured in") == 4
    df = load_records([sweep])
    assert sorted(df[df.status == "ok"].strategy) == ["full", "lora_all", "lora_last", "lora_qk"]


def test_a_step_log_that_does_not_match_its_record_is_named_and_left_out(tmp_path):
    from tests.fixtures import record, write

    write(tmp_path, "0", record())
    write(tmp_path, "1", record(strategy="lora_qk", rank=8, step=15.0, spread=(14.0, 16.0)))
    (tmp_path / "1" / "steps.jsonl").write_text("".join(json.dumps({"kind": "timed", "step_ms": v}) + "\n"
                                                        for v in (40.0, 41.0, 42.0)))
    df = load_records([tmp_path])
    bad = df[df.path.str.endswith("/1")].iloc[0]
    assert bad.status == "unreadable" and "steps.jsonl does not match it" in bad.reason and "41 ms" in bad.reason
