"""Hydra glue: one-line errors for bad overrides, and every config option composes."""
import pytest

from bench.cli import group_options
from tests.conftest import FAST, ROOT, run_cli

GROUPS = {g: group_options(g) for g in ("strategy", "model", "data")}


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


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_config_composes_and_validates(cfg_of, group, option):
    extra = {"jsonl": ["data.path=/dev/null"], "hf": ["model.path=/some/local/model"]}.get(option, [])
    cfg = cfg_of(f"{group}={option}", *extra)
    assert getattr(cfg, group).name == option


@pytest.mark.parametrize("args, needle", [
    (["hydra.run.dir=/proc/nope"], "error: hydra.run.dir: /proc/nope cannot be made or written"),
    (["-m", "strategy=full", "hydra.sweep.dir=/proc/nope/x"], "error: hydra.sweep.dir: /proc/nope/x cannot be"),
])
def test_an_output_directory_that_cannot_be_made_is_one_line(args, needle):
    res = run_cli([*args, *FAST], cwd=ROOT, timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [res.stderr.strip()], res.stderr
    assert res.stderr.startswith(needle)


def test_an_output_directory_below_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    res = run_cli([f"hydra.run.dir={tmp_path / 'afile' / 'run'}", *FAST], cwd=ROOT, timeout=120)
    assert res.returncode == 2 and f"{tmp_path / 'afile'} is not a directory" in res.stderr
    assert "Traceback" not in res.stderr


def test_the_command_line_checks_keys_before_torch_loads():
    """A typo costs about a second: bench.run's preflight runs before any module that imports torch."""
    import subprocess
    import sys

    code = "import sys, bench.run; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-1500:]
