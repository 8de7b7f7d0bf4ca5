"""benchmarks/gpu_check.py on a CPU: the rehearsal CI runs, and the deadline logic, with real sweeps.

A lent GPU has 15 minutes all told; nothing a CPU can catch may cost one of them."""
import importlib.util
import json
import subprocess
import sys
import tarfile
import time

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up
spec.loader.exec_module(gpu_check)


def test_rehearsal_ends_inside_its_budget_with_tarball_summary_and_filing(tmp_path):
    # The parts the assertions read, with a budget they finish in even on a busy runner (about 35 s
    # quiet); what does not fit is skipped: the last part's estimate is set past what is left.
    work, budget = tmp_path / "work", 240
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", str(work), "--rehearse", "--budget-s", str(budget),
                        "--only", "cuda_tests,minimind_88,launch_bound,backends",
                        "--tarball", str(tmp_path / "out" / "gpu_check.tar.gz")],
                       env={**__import__("os").environ, "LORA_BENCH_GPU_CHECK_ESTIMATE": "backends=10000"},
                       cwd=ROOT, capture_output=True, text=True, timeout=budget + 60)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert elapsed < budget + 5  # the interpreter's own start and exit are all that may pass it
    tail = r.stdout.strip().splitlines()
    # The last lines stand alone: every part's fate, the headline's verdict, the tarball.
    assert tail[-1].startswith("- tarball:") and f"of a {budget} s budget" in tail[-1]
    summary = "\n".join(tail[-20:])
    assert "- cuda_tests: ok" in summary and "- minimind_88: ok" in summary and "jobs: 5 ok" in summary
    assert "- minimind_88 verdict: Verdict." in summary and "jobs: 4 ok" in summary  # launch_bound, 2 repeats
    assert "| lora_all r=8 (repeat 1) |" in r.stdout  # the summary's table of a sweep with repeats
    assert "skipped (needs ~" in summary  # the budget does not hold every part: the last ones wait
    assert (tmp_path / "out" / "summary.md").read_text() == (work / "summary.md").read_text()
    with tarfile.open(tmp_path / "out" / "gpu_check.tar.gz") as tar:
        names = tar.getnames()
    assert "summary.md" in names and "gpu_check.log" in names
    assert "minimind_88/report/report.md" in names and any(n.endswith("metrics.json") for n in names)
    # Filed as a GPU run would be: records and report under <study>/<machine>/, and the index.
    filed = work / "filed"
    assert [p.parts[-4] for p in filed.glob("*/*/report/report.md")].count("minimind_88") == 1
    assert "## minimind_88 on" in (filed / "README.md").read_text()


def test_a_part_that_overruns_is_stopped_at_the_deadline_and_keeps_what_it_finished(tmp_path):
    # A short job, then one that would run for hours, estimated at a second: the deadline falls
    # inside the second job, however fast or busy the machine is.
    sweep = tmp_path / "sweep"
    part = gpu_check.Part("long", "an overrunning sweep", 1,
                          [sys.executable, "-m", "bench.run", "-m", "strategy=full", "repeat=0", *gpu_check.TINY,
                           "train.steps=3,1000000", "train.profile=false", f"hydra.sweep.dir={sweep}"],
                          study="sweep")
    t0 = time.monotonic()
    outcome = gpu_check.run_part(part, deadline=t0 + 16, log=tmp_path / "log", grace=5)
    assert outcome.status == "stopped" and outcome.rc == 130
    assert time.monotonic() - t0 < 16 + 1
    statuses = gpu_check.job_statuses(sweep)
    assert 1 <= statuses.get("ok", 0) < 16, statuses
    assert set(statuses) <= {"ok", "interrupted", "duplicate"}
    for p in sweep.glob("*/metrics.json"):  # a finished job's record is whole
        rec = json.loads(p.read_text())
        assert rec["status"] != "ok" or rec["time"]["step_ms"]["median"] > 0
    assert (sweep / "report" / "report.md").exists()  # the interrupted sweep reported what it finished


def test_a_part_that_does_not_fit_is_skipped_without_starting(tmp_path):
    part = gpu_check.Part("big", "never runs", 100, [sys.executable, "-c", "open('ran', 'w')"])
    outcome = gpu_check.run_part(part, deadline=time.monotonic() + 60, log=tmp_path / "log", grace=10)
    assert outcome.status == "skipped" and "needs ~100 s, 50 s left" in outcome.note.replace("49 s", "50 s")
    assert not (ROOT / "ran").exists() and not (tmp_path / "log").exists()


def test_pack_leaves_out_plots_then_steps_to_stay_under_the_limit(tmp_path):
    work = tmp_path / "w"
    (work / "s" / "0").mkdir(parents=True)
    (work / "summary.md").write_text("summary\n")
    (work / "s" / "0" / "metrics.json").write_text("{}")
    rng = __import__("random").Random(0)
    (work / "s" / "plot.png").write_bytes(rng.randbytes(200_000))  # incompressible
    (work / "s" / "0" / "steps.jsonl").write_bytes(rng.randbytes(50_000))
    tarball = tmp_path / "t.tar.gz"
    assert gpu_check.pack(work, tarball, limit=10**7) == []
    assert gpu_check.pack(work, tarball, limit=120_000) == [".png", ".svg", ".html"]
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == ["s/0/metrics.json", "s/0/steps.jsonl", "summary.md"]
    gpu_check.pack(work, tarball, limit=10_000)
    with tarfile.open(tarball) as tar:
        assert sorted(tar.getnames()) == ["s/0/metrics.json", "summary.md"]


@pytest.mark.parametrize("rehearse", [True, False])
def test_plan_is_in_priority_order_and_every_sweep_composes(rehearse, tmp_path):
    from bench.cli import preflight

    parts = gpu_check.plan(tmp_path, rehearse)
    assert [p.name for p in parts][:4] == ["cuda_tests", "minimind_88", "launch_bound", "fixes_gpu"]
    for p in parts:
        if p.study:  # the command line's own check: every key and option known, each sweep composes
            preflight(p.argv[p.argv.index("bench.run") + 1:])
    if not rehearse:  # the priority parts fit the default budget together
        assert sum(p.estimate_s for p in parts[:4]) <= 420 - gpu_check.reserve_s(420)
