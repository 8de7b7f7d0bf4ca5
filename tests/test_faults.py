"""Every job leaves a record with its status, and a sweep survives its bad cells (issue 6)."""
import json
import signal
import subprocess
import sys
import time

import torch

from bench import job as job_mod
from bench.measure import trainer as trainer_mod
from bench.record.store import read_steps
from bench.job import config_key, run_job
from bench.report.load import load_records
from tests.conftest import FAST, ROOT, compose_cfg, run_cli


def _statuses(sweep):
    return [json.loads(p.read_text())["status"] for p in sorted(sweep.glob("*/metrics.json"),
                                                                   key=lambda p: int(p.parent.name))]


def test_sweep_with_invalid_and_diverging_cells_finishes(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "train.lr=1e-3,2e-3,-1,1e30", *FAST, f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]  # invalid and diverged are findings
    assert _statuses(sweep) == ["ok", "ok", "invalid", "diverged"]
    diverged = json.loads((sweep / "3" / "metrics.json").read_text())["outcome"]
    assert diverged["failed_step"] >= 1 and diverged["last_finite_loss"] > 0
    assert "Traceback" not in res.stderr
    failed = (sweep / "report" / "report.md").read_text().split("## Records that did not end ok")[1]
    assert "| invalid |" in failed and "| diverged |" in failed and "train.lr" in failed


def _fail_at(monkeypatch, step_no, action):
    """Make Trainer.step run `action` inside step `step_no` (0 first, 1 counting, then warm-up)."""
    real = trainer_mod.Trainer.step
    calls = {"n": 0}

    def step(self, micro, timer, probe=None, **kwargs):
        if calls["n"] == step_no:
            action()
        calls["n"] += 1
        return real(self, micro, timer, probe, **kwargs)

    monkeypatch.setattr(trainer_mod.Trainer, "step", step)


def test_cuda_out_of_memory_in_a_step_is_an_oom_record(tmp_path, monkeypatch):
    def oom():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    _fail_at(monkeypatch, 4, oom)
    rec = run_job(compose_cfg([*FAST, "train.steps=5", "train.profile=false"]), tmp_path)
    assert rec.status == "oom" and rec.outcome.oom_where == "cuda" and rec.outcome.failed_step == 4
    assert "20.00 GiB" in rec.outcome.reason
    # What was measured before the failure is kept: first, counting, one warm-up, one timed step.
    assert rec.time.timed_steps == 1 and rec.time.step_ms.median > 0
    assert rec.memory.optimizer_state_bytes > 0 and rec.memory.host_peak_rss_bytes > 0
    assert len(read_steps(tmp_path / "steps.jsonl")) == 4
    assert json.loads((tmp_path / "metrics.json").read_text())["time"]["timed_steps"] == 1


def test_host_memory_cap_stops_the_job_during_a_step(tmp_path, monkeypatch):
    import psutil

    cap_gb = (psutil.Process().memory_info().rss + 300 * 2**20) / 2**30
    hog = []

    def allocate():
        hog.append(torch.ones(600 * 2**20 // 4))  # 600 MiB, touched
        time.sleep(0.5)  # the guard samples every 50 ms: it must fire inside this step

    _fail_at(monkeypatch, 4, allocate)
    rec = run_job(compose_cfg([*FAST, "train.steps=5", "train.profile=false", f"train.max_host_memory_gb={cap_gb:.3f}"]),
                  tmp_path)
    hog.clear()
    assert rec.status == "oom" and rec.outcome.oom_where == "host" and rec.outcome.failed_step == 4, rec.outcome and rec.outcome.reason
    assert "train.max_host_memory_gb" in rec.outcome.reason


def _sigterm_after(args, steps, n_steps):
    """Start `python -m bench.run args` (a very long job), SIGTERM it once `steps` has n lines."""
    args = [sys.executable, "-m", "bench.run", *args, *[o for o in FAST if not o.startswith("train.steps")],
            "train.steps=100000"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_steps(steps)) < n_steps:  # the live log (.part) counts
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc, err


def test_sigterm_leaves_an_interrupted_record_and_a_readable_step_log(tmp_path):
    run_dir = tmp_path / "run"
    steps = run_dir / "steps.jsonl"
    proc, err = _sigterm_after([f"hydra.run.dir={run_dir}"], steps, 5)
    assert proc.returncode == 130, err[-2000:]
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "interrupted"
    rows = read_steps(steps)
    assert len(rows) >= 5 and rec["time"]["timed_steps"] >= 2
    assert "Traceback" not in err


def test_resume_runs_only_the_missing_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "strategy=full,lora_qk,lora_last", *FAST, f"hydra.sweep.dir={sweep}"]
    assert run_cli(args, cwd=ROOT).returncode == 0
    first = sweep / "0" / "metrics.json"
    mtime = first.stat().st_mtime_ns
    (sweep / "1" / "metrics.json").unlink()               # a job that never finished
    rec = json.loads((sweep / "2" / "metrics.json").read_text())
    rec["status"] = "error"                             # a job that failed
    (sweep / "2" / "metrics.json").write_text(json.dumps(rec))
    res = run_cli(args, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("[skip]") == 1 and res.stdout.count("[ok]") == 2
    assert first.stat().st_mtime_ns == mtime               # the finished job was not touched
    assert _statuses(sweep) == ["ok", "ok", "ok"]
    assert list((sweep / "2").glob("metrics.replaced-*.json"))  # the failed record is kept aside
    assert list((sweep / "2").glob("steps.replaced-*.jsonl"))   # and so are its steps


def test_config_key_ignores_what_does_not_change_the_measurement():
    node = {"train": {"lr": 1e-3, "progress": True}, "resume": True, "strategy": {"name": "full"}}
    same = {"train": {"lr": 1e-3, "progress": False}, "resume": False, "strategy": {"name": "full"}}
    other = {"train": {"lr": 2e-3, "progress": True}, "resume": True, "strategy": {"name": "full"}}
    assert config_key(node) == config_key(same) != config_key(other)


def test_loader_skips_and_names_broken_records(tmp_path):
    run_job(compose_cfg(FAST), tmp_path / "good")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "metrics.json").write_text('{"schema": 2, "status": "ok", "ti')
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text('{"schema": 0}')
    (tmp_path / "killed" / ".hydra").mkdir(parents=True)  # Hydra made the job; it wrote nothing
    warnings = []
    df = load_records([tmp_path], warn=warnings.append)
    status = dict(zip(df.path.map(lambda p: p.rsplit("/", 1)[-1]), df.status))
    assert status == {"good": "ok", "cut": "unreadable", "old": "unreadable", "killed": "missing"}
    assert len(warnings) == 2 and any("cut" in w for w in warnings) and any("old" in w for w in warnings)


def test_sigterm_stops_a_sweep_after_writing_its_report(tmp_path):
    sweep = tmp_path / "sweep"
    proc, err = _sigterm_after(["-m", "strategy=full,lora_qk", f"hydra.sweep.dir={sweep}"],
                               sweep / "0" / "steps.jsonl", 3)
    assert proc.returncode == 130, err[-2000:]
    assert not (sweep / "1").exists()  # the sweep stopped as asked
    failed = (sweep / "report" / "report.md").read_text().split("## Records that did not end ok")[1]
    assert "| interrupted |" in failed


def test_cuda_out_of_memory_before_training_is_an_oom_record(tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(job_mod, "setup", oom)
    rec = run_job(compose_cfg(FAST), tmp_path)
    assert rec.status == "oom" and rec.outcome.failed_step is None and "before training" in rec.outcome.reason


SWEEP = ["-m", "strategy=full,lora_qk,lora_all,lora_last", *[o for o in FAST if not o.startswith("train.steps")],
         "train.steps=40"]


def test_sigint_at_any_moment_stops_the_sweep_with_a_non_zero_exit(tmp_path):
    """SIGINT at random moments: while Python starts, during a step, between jobs, in the report
    (tests/test_signals.py drives every phase deterministically)."""
    started = 0
    rng = __import__("random").Random()
    # Offsets within the sweep on a fast machine too (400 steps a job: the four jobs outlast 8 s; 200 once did not).
    for n, offset in enumerate(sorted([0.3, *[rng.uniform(1.5, 8.0) for _ in range(4)]])):
        sweep = tmp_path / f"s{n}"
        proc = subprocess.Popen([sys.executable, "-m", "bench.run", *SWEEP, "train.steps=400", f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if n > 0:  # within the sweep: counted from its start, which a busy machine delays by seconds
            deadline = time.time() + 60
            while not sweep.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
        time.sleep(offset)
        if proc.poll() is not None:  # it finished first: nothing to interrupt at this offset
            continue
        sent = time.time()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        report = sweep / "report" / "report.md"
        if proc.returncode == 0 and report.exists() and report.stat().st_mtime <= sent:
            continue  # the sweep and its report were done before the signal: it met the process's exit
        assert proc.returncode != 0, (offset, err[-1500:])
        assert "Exception ignored" not in err, (offset, err[-1500:])
        if sweep.exists():  # the sweep had begun: it says so, and what it measured is reported
            started += 1
            # 130: stopped by the flag; -SIGINT: the signal came as Python was exiting after the sweep.
            assert proc.returncode in (130, -signal.SIGINT), (offset, err[-1500:])
            assert "Traceback" not in err, (offset, err[-1500:])
            assert not (sweep / "3" / "metrics.json").exists() or (sweep / "report" / "report.md").exists()
            for job in sweep.glob("[0-9]*"):
                rec = json.loads((job / "metrics.json").read_text())
                assert rec["status"] in ("ok", "interrupted", "duplicate"), (offset, rec["status"])
    assert started >= 3


def test_every_unreadable_record_is_listed_and_the_rest_reported(tmp_path):
    from bench.report import build_report
    from tests.fixtures import record, write

    root = tmp_path / "mixed"
    write(root, "0", record())
    write(root, "lora_run", record(strategy="lora_qk", rank=8, step=15.0, spread=(14.0, 16.0)))  # a name and a number
    write(root, "cut", '{"schema": 2, "status": "ok", "ti')
    write(root, "typed", {**record(), "params": {"total": "many", "trainable": 1}})
    md = build_report([root], tmp_path / "out").read_text()
    assert "| lora_qk r=8 |" in md and "| full |" in md
    failed = md.split("## Records that did not end ok")[1]
    assert "cut/metrics.json: not a readable JSON record" in failed
    assert "typed/metrics.json: params.total: expected int" in failed


def test_bad_values_in_a_sweep_and_a_single_run_are_invalid_records(tmp_path):
    sweep = tmp_path / "sweep"
    res = run_cli(["-m", "strategy=lora_qk", "lora.rank=8,abc", *FAST, f"hydra.sweep.dir={sweep}"], cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]  # an invalid cell is a finding of a sweep
    assert _statuses(sweep) == ["ok", "invalid"]
    failed = (sweep / "report" / "report.md").read_text().split("## Records that did not end ok")[1]
    assert "lora.rank: expected an integer, got 'abc'" in failed
    run = tmp_path / "run"
    res = run_cli(["lora.rank=[1,2]", "strategy=lora_qk", *FAST, f"hydra.run.dir={run}"], cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert json.loads((run / "metrics.json").read_text())["outcome"]["key"] == "lora.rank"
    res = subprocess.run([sys.executable, "-m", "bench.report", str(run)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "| invalid |" in (run / "report" / "report.md").read_text()


def test_a_report_that_fails_makes_the_sweep_fail(tmp_path, capsys):
    from bench.cli import REPORT_FAILED, report_sweep
    from bench.run import exit_code

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "report").write_text("a file where the report's folder should be")
    assert report_sweep(sweep) is False and REPORT_FAILED[-1] == sweep
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"python -m bench.report {sweep}" in err
    REPORT_FAILED.clear()
    assert exit_code([("ok", True)], report_ok=False) == 1


def test_a_directory_without_records_is_one_line_and_non_zero(tmp_path):
    (tmp_path / "empty" / "0" / ".hydra").mkdir(parents=True)
    res = subprocess.run([sys.executable, "-m", "bench.report", str(tmp_path / "empty")], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no job records" in res.stderr
