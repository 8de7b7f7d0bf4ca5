"""Sweeps through Hydra's submitit launcher: submitit_local runs each job in a process of its own,
as SLURM would on a cluster (hydra/launcher=submitit_slurm, or the conf/hydra/launcher/slurm_gpu
preset). The sweep still ends with its report and its exit code, and resume still skips."""
import json

import pytest

from bench.record.store import read_record
from tests.conftest import FAST, ROOT, compose_cfg, run_cli

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def test_submitit_local_sweep_ends_with_records_and_the_report(tmp_path):
    args = ["-m", "hydra/launcher=submitit_local", "strategy=full,lora_qk", *FAST, "train.profile=false",
            f"hydra.sweep.dir={tmp_path}"]
    r = run_cli(args, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [read_record(tmp_path / str(i) / "metrics.json") for i in (0, 1)]
    assert [x.status for x in recs] == ["ok", "ok"] and {x.identity.strategy for x in recs} == {"full", "lora_qk"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| lora_qk r=8 |" in md or "lora_qk r=8 was left out" in md
    # The same sweep again: both jobs are found measured and skipped, in their own processes too.
    again = run_cli(args, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    logs = "".join(p.read_text() for p in tmp_path.rglob("*_log.out"))
    assert logs.count("[skip]") == 2


def test_slurm_gpu_preset_composes_with_the_users_overrides():
    cfg = compose_cfg(["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=120",
                       "dist.nproc=4"])
    # compose() leaves the hydra node out unless asked; read the preset the way Hydra merges it.
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        full = compose("config", overrides=["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu",
                                            "hydra.launcher.timeout_min=120", "dist.nproc=4"],
                       return_hydra_config=True)
    launcher = full.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.tasks_per_node) == ("gpu", 120, 1)
    assert full.dist.nproc == 4 and json.loads(json.dumps(cfg.dist.nproc)) == 4


def test_ctrl_c_on_a_submitit_local_sweep_leaves_a_record_per_job_and_no_process(tmp_path):
    """As a terminal's Ctrl-C: SIGINT to the whole process group, the jobs' own processes included."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    args = [sys.executable, "-m", "bench.run", "-m", "hydra/launcher=submitit_local", "strategy=full,lora_qk",
            *[o for o in FAST if not o.startswith("train.steps")], "train.steps=100000", "train.profile=false",
            f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("*/steps.jsonl*"))) < 2:  # the live logs (.part)
        time.sleep(0.3)
    time.sleep(2)
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert [read_record(tmp_path / str(i) / "metrics.json").status for i in (0, 1)] == ["interrupted"] * 2
    from tests.conftest import still_running

    assert still_running(children) == []
