import os
import sys
from pathlib import Path

# The suite runs on three workers (pytest-xdist) on two cores: each worker and every process it starts
# computes on one thread, so that no OpenMP team spin-waits for a core the other worker holds.
# Measured on this project's 2-core VM: 13.3 CPU-minutes and 7.1 min of wall time with torch's
# default two threads, 8.7 and 5.2 with one. Set before torch is imported; inherited by subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported early by a plugin: set it there too
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

# Overrides that make a job take a second on tiny: tests check numbers, not speed. One repeat (a
# sweep's default is three) and a short paired baseline.
FAST = ["device=cpu", "train.steps=3", "train.warmup_steps=1", "train.eval_batches=1", "train.batch_size=2",
        "train.seq_len=16", "train.progress=false", "repeat=0", "train.paired_steps=3"]


def compose_cfg(overrides=()):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture
def cfg_of():
    """compose_cfg + load_config: the validated BenchConfig for some overrides."""
    from bench.config import load_config

    return lambda *ov: load_config(compose_cfg(ov))


def run_cli(args, cwd, timeout=300):
    import subprocess

    return subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def still_running(pids, wait: float = 10.0) -> list[int]:
    """The pids that are still running (not gone, not zombies) after up to `wait` s. A process may exit
    between two looks at it (psutil's NoSuchProcess), and a killed one needs a moment on a busy machine."""
    import time

    import psutil

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.time() + wait
    while True:
        left = [p for p in pids if running(p)]
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


def built(*overrides):
    """The build stage for some overrides, on CPU, seeded: (cfg, Setup)."""
    import torch

    from bench.models.setup import seed_everything, setup
    from bench.config import load_config

    cfg = load_config(compose_cfg(["device=cpu", *overrides]))
    seed_everything(cfg.train.seed)
    return cfg, setup(cfg, torch.device("cpu"))


def trainer_of(cfg, s):
    from bench.measure.trainer import Trainer

    return Trainer(s.model, cfg, s.adapters["B"])


def reported(md: str, label: str) -> bool:
    """A configuration is in a report's tables, or, measured on a busy machine (a shared CI runner),
    named in the warning that leaves it out of the verdicts."""
    if f"| {label} |" in md:
        return True
    warning = md.split("## Warning: jobs measured on a busy machine")[1].split("\n## ")[0] if "## Warning" in md else ""
    strategy, _, rank = label.partition(" ")
    return any(f": {strategy}{(' ' + rank) if rank else ''} was left out" in ln for ln in warning.splitlines())
