import json
import math

import pytest
import torch

from bench.models.checkpoint import auto_path
from bench.models.data import MarkovChain
from bench.config import load_config
from bench.job import run_job
from bench.pretrain import pretrain
from tests.conftest import FAST, ROOT, compose_cfg, run_cli


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny base pretrained for a few seconds (module-wide: it is shared by the tests below)."""
    d = tmp_path_factory.mktemp("ckpt")
    overrides = ["device=cpu", "pretrain.steps=80", "pretrain.batch_size=8", f"pretrain.dir={d}"]
    cfg = load_config(compose_cfg(overrides))
    path = auto_path(cfg)
    return path, pretrain(cfg, path), overrides


def test_pretraining_lowers_eval_loss_toward_the_floor(base):
    path, meta, _ = base
    assert path.exists() and json.loads(path.with_suffix(".json").read_text())["steps"] == 80
    assert meta["eval_before"] == pytest.approx(math.log(256), rel=0.02)  # an untrained model
    assert meta["eval_after"] < meta["eval_before"] - 2.0
    assert meta["eval_after"] > meta["floor"]


def test_finetuning_starts_from_the_checkpoint(base, tmp_path):
    path, meta, overrides = base
    rec = run_job(compose_cfg([*FAST, *overrides, f"model.checkpoint={path}", "strategy=lora_all"]), tmp_path / "a")
    assert rec.status == "ok"
    # The checkpoint's loss (its held-out set is larger, so not the same number), not a random model's.
    assert rec.loss.eval_start == pytest.approx(meta["eval_after"], rel=0.25)
    assert rec.loss.eval_start < 0.5 * math.log(256)
    auto = run_job(compose_cfg([*FAST, *overrides, "model.checkpoint=auto"]), tmp_path / "b")
    assert auto.plan.checkpoint == str(path) and auto.pretrain is None  # the same file, reused
    shifted = run_job(compose_cfg([*FAST, *overrides, f"model.checkpoint={path}", "data.shift=0.5"]), tmp_path / "c")
    assert shifted.loss.eval_start > rec.loss.eval_start + 0.5  # a new language to adapt to


def test_bad_checkpoints_are_one_line_errors(base, tmp_path):
    path, _, overrides = base
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:300])
    rec = run_job(compose_cfg([*FAST, f"model.checkpoint={cut}"]), tmp_path / "a")
    assert rec.status == "invalid" and rec.outcome.key == "model.checkpoint" and "not a readable checkpoint" in rec.outcome.reason
    rec = run_job(compose_cfg([*FAST, f"model.checkpoint={path}", "model.dim=64"]), tmp_path / "b")
    assert rec.status == "invalid" and "does not fit this model" in rec.outcome.reason
    res = run_cli([f"model.checkpoint={cut}", *FAST, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT)
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(err) == 1 and "model.checkpoint" in err[0]


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    bad = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, bad)
    rec = run_job(compose_cfg([*FAST, f"model.checkpoint={bad}"]), tmp_path / "a")
    assert rec.status == "invalid" and "not a readable checkpoint" in rec.outcome.reason


def test_markov_shift_redraws_a_share_of_the_states():
    base, shifted = MarkovChain(200, 4, seed=5), MarkovChain(200, 4, seed=5, shift=0.25)
    changed = (base.succ != shifted.succ).any(1) | (base.prob != shifted.prob).any(1)
    assert int(changed.sum()) == 50
    assert torch.equal(base.succ[:, 0], shifted.succ[:, 0])  # the cycle that keeps it irreducible
    assert torch.equal(MarkovChain(200, 4, seed=5, shift=0.0).succ, base.succ)
