"""A projected job: its record, its refusals, and that it can never pass for a measurement."""
import json

import pytest

from bench.job import run_job
from bench.project.allocator import replay
from bench.project.job import CUDA_CONTEXT, largest_batch, reserve_factor, reserved
from tests.conftest import FAST, ROOT, compose_cfg, run_cli


def test_a_projected_record_says_so_and_holds_no_measured_section(tmp_path):
    cfg = compose_cfg([*FAST, "strategy=lora_all", "project.gpu=[H100,RTX4090]", "data=random"])
    rec = run_job(cfg, tmp_path)
    assert rec.status == "ok" and rec.kind == "projected"
    assert rec.time is None and rec.memory is None and rec.work is None and rec.paired is None
    assert "projection onto H100, RTX4090 (not measured)" == rec.env.machine
    p = rec.projection
    assert [d.device for d in p.devices] == ["H100", "RTX4090"]
    from bench.config import load_config
    from bench.project.fake import fake_step

    step = fake_step(load_config(cfg), foreach=True)  # the same step again: the same allocations, replayed
    cached = max(replay(step.events, step.before_step, 3).reserved)
    assert step.peak_bytes == p.peak_bytes and cached >= p.peak_bytes
    for d in p.devices:
        assert d.reserved_bytes == cached + CUDA_CONTEXT and d.fits == (d.reserved_bytes <= d.memory_bytes)
        assert d.alloc_retries == 0  # far from either card's capacity
        assert d.step_ms >= max(d.host_ms, d.busy_ms) * 0.999 and d.bound in ("host", "device")
    assert p.split["parameters"] > 0 and p.ops_per_step > 0


def test_the_reserve_and_the_largest_batch_closed_forms():
    from types import SimpleNamespace

    assert reserved(1000, 1.1) == 1100 + CUDA_CONTEXT
    assert reserve_factor(SimpleNamespace(events=[], before_step=0, peak_bytes=10)) == 1.10  # no order recorded
    gib = 2**30
    # measured at batch 4: the forward peaks at 14 GiB with 4 GiB that grow (10 fixed + 1 per sample), the
    # optimizer at 12 GiB; on a 24 GiB card: (24 - 0.5) / 1.1 - 10 = 11.36 -> 11 samples
    stages = {"forward": {"peak": 14 * gib, "batch_bytes": 4 * gib}, "optimizer": {"peak": 12 * gib, "batch_bytes": 0}}
    assert largest_batch(24 * gib, stages, 4, 1.1) == 11
    assert largest_batch(12 * gib, stages, 4, 1.1) == 0  # the optimizer's peak alone does not fit
    assert largest_batch(24 * gib, {}, 4, 1.1) is None


@pytest.mark.parametrize("extra, key, word", [
    (["project.gpu=TPUv9"], "project.gpu", "TPUv9"),
    (["project.gpu=H100", "dist.nproc=2"], "project.devices", "name how many"),
    (["project.gpu=H100", "train.grad_accum=2"], "project.gpu", "one micro-batch"),
    (["project.gpu=H100", "lora.backend=peft"], "project.gpu", "lora.backend=native")])
def test_what_cannot_be_projected_is_an_invalid_record(tmp_path, extra, key, word):
    rec = run_job(compose_cfg([*FAST, "strategy=lora_all", *extra]), tmp_path)
    assert rec.status == "invalid" and rec.outcome.key == key and word in rec.outcome.reason


def test_a_local_config_without_weights_is_projected_and_refused_for_measuring(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=128, vocab_size=256, max_position_embeddings=128)
    config.save_pretrained(tmp_path / "cfg")  # config.json, no weights
    common = [*FAST, "model=hf", f"model.path={tmp_path / 'cfg'}", "strategy=lora_qv", "data=random"]
    rec = run_job(compose_cfg([*common, "project.gpu=L40S"]), tmp_path / "p")
    assert rec.status == "ok" and rec.kind == "projected" and rec.model_shape.dim == 64
    rec = run_job(compose_cfg(common), tmp_path / "m")
    assert rec.status == "invalid" and rec.outcome.key == "model.path"


def test_a_sweep_projects_each_configuration_once_whatever_its_repeats(tmp_path):
    """A projection is deterministic: the sweep's default three repeats are one job, the others
    recorded as duplicates of it, and the report counts what it holds."""
    sweep = tmp_path / "sweep"
    fast = [o for o in FAST if not o.startswith("repeat=")]
    r = run_cli(["-m", "repeat=0,1,2", "strategy=full,lora_all", "project.gpu=H100", *fast, f"hydra.sweep.dir={sweep}"],
                cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(p.read_text()) for p in sorted(sweep.glob("[0-9]*/metrics.json"))]
    assert sorted(x["status"] for x in recs) == ["duplicate"] * 4 + ["ok"] * 2
    assert r.stdout.count("PROJECTED, not measured") == 2 and r.stdout.count("[skip]") == 4
    md = (sweep / "report" / "report.md").read_text()
    assert "0 measured records and 2 PROJECTED (not measured) records of 6 job directories" in md


def test_a_gpu_projection_does_not_depend_on_the_machine_computing_it(tmp_path, monkeypatch):
    """The same figures beside a CPU hog: nothing of this machine (its calibration, its load) enters."""
    import subprocess
    import sys

    import bench.measure.calibrate as calibrate

    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: pytest.fail("a GPU projection calibrated this CPU"))
    ov = [*FAST, "strategy=lora_all", "project.gpu=H100", "data=random"]
    quiet = run_job(compose_cfg(ov), tmp_path / "quiet")
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = run_job(compose_cfg(ov), tmp_path / "busy")
    finally:
        hog.kill()
        hog.wait()
    assert quiet.status == busy.status == "ok"
    a, b = quiet.projection.devices[0], busy.projection.devices[0]
    assert (a.step_ms, a.host_op_us, a.bound, a.reserved_bytes) == (b.step_ms, b.host_op_us, b.bound, b.reserved_bytes)


def test_lengths_that_vary_are_timed_at_their_mean_and_sized_at_their_longest(tmp_path):
    ov = [*FAST, "strategy=lora_all", "project.gpu=H100", "data=random", "train.seq_len=32"]
    varied = run_job(compose_cfg([*ov, "project.mean_seq_len=8"]), tmp_path / "varied").projection
    longest = run_job(compose_cfg(ov), tmp_path / "longest").projection
    mean = run_job(compose_cfg([*ov[:-1], "train.seq_len=8"]), tmp_path / "mean").projection
    assert varied.peak_bytes == longest.peak_bytes and varied.devices[0].reserved_bytes == longest.devices[0].reserved_bytes
    assert varied.devices[0].step_ms == mean.devices[0].step_ms and varied.flops_per_step == mean.flops_per_step
    assert varied.mean_seq_len == 8


def test_ranks_over_several_nodes_are_priced_on_the_network(tmp_path):
    from bench.project.links import LINKS

    rec = run_job(compose_cfg([*FAST, "strategy=lora_all", "project.gpu=H100", "data=random", "parallel=ddp",
                               "project.devices=4", "project.nodes=2"]), tmp_path)
    p, d = rec.projection, rec.projection.devices[0]
    assert (p.ranks, p.nodes, p.mode) == (4, 2, "ddp")
    assert d.link == "2 nodes x 2 GPUs per node on NVLink4, IB-NDR between"
    ib = LINKS["IB-NDR"]  # slower than NVLink 4: the ring runs at its rate, with its latency
    allreduce = p.collectives["allreduce"]
    expected = allreduce["calls"] * ib.latency_s + 2 * 3 / 4 * allreduce["bytes"] / ib.bus_bandwidth
    assert d.comm_ms == pytest.approx(expected * 1e3)
    assert d.step_ms == pytest.approx(d.busy_ms + d.host_wait_ms + d.exposed_comm_ms)


def test_a_step_whose_tensors_fit_runs_where_the_allocator_gives_its_cache_back():
    """40 MiB made and freed, then 50 MiB: unbounded, the allocator holds both segments (90 MiB); on a
    device with 70 MiB beside the CUDA context it returns the cached 40 MiB first and fits in 50 MiB;
    with 45 MiB the 50 MiB tensor cannot fit at all."""
    from types import SimpleNamespace

    from bench.project.job import on_device

    mib = 2**20
    step = SimpleNamespace(events=[(1, 40 * mib), (1, -1), (2, 50 * mib), (2, -1)], before_step=0, peak_bytes=50 * mib)
    unbounded = max(replay(step.events, 0, 3).reserved) + CUDA_CONTEXT
    assert unbounded == 90 * mib + CUDA_CONTEXT
    # the first step returns the cached 40 MiB once; later steps carve the 40 MiB from the 50 MiB block: no retry
    assert on_device(step, CUDA_CONTEXT + 70 * mib, unbounded) == (50 * mib + CUDA_CONTEXT, True, 0)
    assert on_device(step, CUDA_CONTEXT + 45 * mib, unbounded) == (unbounded, False, None)
    assert on_device(step, 2 * unbounded, unbounded) == (unbounded, True, 0)  # never near the capacity: no replay


def test_the_host_costs_are_the_fixed_constants_unless_the_user_names_them(cfg_of):
    from bench.project.job import GPU_HOST_NODE_US, GPU_HOST_OP_US, host_costs

    op_s, node_s, said = host_costs(cfg_of("project.gpu=H100"))
    assert (op_s, node_s) == (pytest.approx(GPU_HOST_OP_US * 1e-6), pytest.approx(GPU_HOST_NODE_US * 1e-6))
    assert "us per operation, fixed" in said and "us per autograd node, fixed" in said
    op_s, node_s, said = host_costs(cfg_of("project.gpu=H100", "project.host_op_us=5", "project.host_node_us=0"))
    assert (op_s, node_s) == (pytest.approx(5e-6), 0.0) and said == "project.host_op_us=5; project.host_node_us=0"
