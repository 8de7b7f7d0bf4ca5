"""Two-rank jobs on this CPU (gloo), through torchrun, each ending in one record. The collective
counts are measured, and held here against closed forms:
- DDP all-reduces every trainable gradient once per step: 4 bytes x trainable parameters (fp32);
- FSDP all-gathers every parameter, frozen or not, so LoRA gathers about what full fine-tuning
  does; it reduce-scatters only trainable gradients, so LoRA's are a small fraction of full's."""
import signal
import subprocess
import sys
import time

import pytest

from bench.job import run_job
from bench.record.store import read_steps
from tests.conftest import FAST, ROOT, compose_cfg

TWO = [*FAST, "dist.nproc=2", "train.steps=3", "model.dim=64", "lora.rank=2"]


def _job(tmp_path, name, *overrides):
    rec = run_job(compose_cfg([*TWO, *overrides]), tmp_path / name)
    assert rec.status == "ok", rec.outcome and rec.outcome.reason
    return rec


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def jobs(dist_dir):
    tmp = dist_dir
    return {(mode, s): _job(tmp, f"{mode}_{s}", f"dist.mode={mode}", f"strategy={s}",
                            *([] if (mode, s) in PROFILED else ["train.profile=false"]))
            for mode in ("ddp", "fsdp") for s in ("full", "lora_all")}


PROFILED = {("ddp", "lora_all"), ("fsdp", "full")}  # one profiled step each mode: the attribution test's


@pytest.mark.parametrize("strategy", ["full", "lora_all"])
def test_ddp_all_reduces_four_bytes_per_trainable_parameter(jobs, strategy):
    rec = jobs[("ddp", strategy)]
    assert rec.comm.allreduce_bytes_per_step == pytest.approx(4 * rec.params.trainable, rel=0.01)
    assert rec.comm.allgather_bytes_per_step == 0 and rec.comm.reducescatter_bytes_per_step == 0
    assert rec.dist.world_size == 2 and rec.dist.mode == "ddp" and rec.dist.backend == "gloo"


def test_fsdp_gathers_the_frozen_weights_too_and_scatters_only_trainable_gradients(jobs):
    from tests.conftest import built
    from tests.project.test_parallel import fsdp_closed_form

    full, lora = jobs[("fsdp", "full")].comm, jobs[("fsdp", "lora_all")].comm
    assert full.allreduce_bytes_per_step == 0
    assert lora.allgather_bytes_per_step == pytest.approx(full.allgather_bytes_per_step, rel=0.10)
    assert 0 < lora.reducescatter_bytes_per_step < full.reducescatter_bytes_per_step / 10
    # Each block's parameters are gathered for forward and again for backward, the root's once (FSDP2
    # keeps the root's from forward): 2 blocks and the root, 5 calls; shards padded to equal rows.
    for strategy, comm in (("full", full), ("lora_all", lora)):
        _, s = built(*[o for o in TWO if o.startswith(("model", "lora", "train.batch", "train.seq"))], f"strategy={strategy}")
        closed = fsdp_closed_form(s.model, 2)
        assert (comm.allgather_bytes_per_step, comm.allgather_calls_per_step) == \
            (closed["allgather"]["bytes"], closed["allgather"]["calls"])
        assert (comm.reducescatter_bytes_per_step, comm.reducescatter_calls_per_step) == \
            (closed["reducescatter"]["bytes"], closed["reducescatter"]["calls"])


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
@pytest.mark.parametrize("strategy", ["full", "lora_all"])
def test_projected_collectives_equal_the_measured_ones(jobs, mode, strategy):
    """The projection of the same job onto 2 ranks (fake tensors, fake process group) hands every
    collective the payload that gloo's two real ranks were handed, call for call."""
    from bench.config import load_config
    from bench.project.fake import fake_step

    cfg = load_config(compose_cfg([*TWO, f"dist.mode={mode}", f"strategy={strategy}", "project.gpu=H100",
                                   "project.devices=2"]))
    projected = fake_step(cfg, foreach=True, world=2).comm
    measured = jobs[(mode, strategy)].comm
    got = {k: {"bytes": getattr(measured, f"{k}_bytes_per_step"), "calls": getattr(measured, f"{k}_calls_per_step")}
           for k in ("allreduce", "allgather", "reducescatter") if getattr(measured, f"{k}_calls_per_step")}
    assert projected == got


def test_a_step_is_the_slowest_ranks_and_memory_is_per_rank(jobs, dist_dir):
    rec = jobs[("ddp", "lora_all")]
    assert [r.rank for r in rec.dist.ranks] == [0, 1] and all(r.host_peak_rss_bytes for r in rec.dist.ranks)
    job_dir = dist_dir / "ddp_lora_all"
    timed = [r for r in read_steps(job_dir / "steps.jsonl") if r["kind"] == "timed"]
    assert len(timed) == 3 and all(r["step_ms"] == max(r["rank_step_ms"]) for r in timed)
    assert rec.time.step_ms.median == pytest.approx(sorted(r["step_ms"] for r in timed)[1])
    assert rec.work.tokens_per_step == 2 * 2 * 16  # two ranks, each its own batch of 2 x 16


def test_communication_is_an_attribution_category(jobs):
    for rec in (jobs[k] for k in PROFILED):
        assert rec.comm.comm_ms is not None and rec.comm.comm_ms >= 0
        assert rec.attribution.categories["communication"] == rec.comm.comm_ms
        assert rec.attribution.ops["communication"] > 0


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_peft_runs_under_both_modes(tmp_path, mode):
    pytest.importorskip("peft")
    rec = _job(tmp_path, mode, "strategy=lora_qk", "lora.backend=peft", f"dist.mode={mode}", "train.profile=false")
    assert rec.comm.allreduce_bytes_per_step + rec.comm.reducescatter_bytes_per_step > 0


def test_a_failing_rank_fails_the_job_and_is_named(tmp_path):
    rec = run_job(compose_cfg([*TWO, "strategy=lora_all", "lora.rank=100000"]), tmp_path)
    assert rec.status == "invalid" and rec.outcome.reason.startswith("rank 0: lora.rank")


def test_ctrl_c_leaves_no_rank_running(tmp_path):
    args = [sys.executable, "-m", "bench.run", *[o for o in TWO if not o.startswith("train.steps")],
            "train.steps=100000", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps = [tmp_path / "ranks" / f"rank{r}" / "steps.jsonl" for r in (0, 1)]
    deadline = time.time() + 120
    while time.time() < deadline and not all(len(read_steps(p)) > 5 for p in steps):  # live logs (.part) count
        time.sleep(0.2)
    pids = [int((tmp_path / "ranks" / f"rank{r}" / "pid").read_text()) for r in (0, 1)]
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    from tests.conftest import still_running

    assert still_running(pids) == []
    from bench.record.store import read_record

    assert read_record(tmp_path / "metrics.json").status == "interrupted"


def test_the_job_is_judged_on_its_slowest_steps_and_reported_once(jobs, dist_dir):
    from bench.report.load import load_records

    rec = jobs[("ddp", "full")]
    # Sibling ranks share the cores: their run-queue waits are kept per rank, not judged.
    assert rec.stability.wait_fraction is None and rec.stability.steps == 3
    assert all(r.wait_fraction is not None for r in rec.dist.ranks)
    df = load_records([dist_dir])
    assert sorted(df.ranks) == ["2 x ddp", "2 x ddp", "2 x fsdp", "2 x fsdp"]  # no row for a rank's own record


@pytest.mark.parametrize("mode,overrides", [
    ("fsdp", ["strategy=head_only"]),   # trains the head, tied to the embedding
    ("fsdp", ["strategy=lora_last"]),   # adapts the tied head
    ("ddp", ["strategy=lora_all", "lora.impl=fused"]),
    ("fsdp", ["strategy=lora_all", "train.checkpointing=blocks",    # the recompute inside sharded blocks,
              "dist.mixed_precision=bf16"]),                          # under torchtitan's mixed precision
    ("ddp", ["strategy=lora_all", "lora.dora=true"]),               # DoRA's magnitudes are gradients too
])
def test_tied_weights_and_the_fused_layer_run_on_two_ranks(tmp_path, mode, overrides):
    rec = _job(tmp_path, mode, f"dist.mode={mode}", "train.profile=false", *overrides)
    sent = rec.comm.allreduce_bytes_per_step + rec.comm.reducescatter_bytes_per_step
    assert sent == pytest.approx(4 * rec.params.trainable, rel=0.01)  # every trainable gradient, once
    if "dist.mixed_precision=bf16" in overrides:
        _mixed_precision_closed_form(rec, overrides)


def _mixed_precision_closed_form(rec, overrides):
    """torchtitan's policy measured on gloo: the all-gathers move bf16, half the fp32 closed form; the
    reduce-scatters fp32, all of it; parameters and gradients kept in fp32."""
    from tests.conftest import built
    from tests.project.test_parallel import fsdp_closed_form

    _, s = built(*[o for o in TWO if o.startswith(("model", "lora", "train.batch", "train.seq"))], overrides[0])
    closed = fsdp_closed_form(s.model, 2)
    assert rec.comm.allgather_bytes_per_step == closed["allgather"]["bytes"] // 2
    assert rec.comm.reducescatter_bytes_per_step == closed["reducescatter"]["bytes"]
    assert (rec.memory.weights_bytes, rec.memory.grads_bytes) == (4 * rec.params.total, 4 * rec.params.trainable)
