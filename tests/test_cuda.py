"""CUDA paths end to end. Skipped without a GPU; benchmarks/gpu_check.py runs them on one.

Their logic is covered on CPU too (tests/measure/test_timer.py fakes CUDA events, the windowed
protocol included; tests/measure/test_attribution.py checks the GPU-idle arithmetic); these check
the real thing: events, autocast, the fp16 grad scaler, allocator peaks, NVML and the profiler's
kernels.
"""
import pytest
import torch

from bench.job import run_job
from bench.record.store import read_steps
from tests.conftest import FAST, compose_cfg

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ON_GPU = [o for o in FAST if not o.startswith("device=")] + ["device=cuda", "train.steps=5"]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("strategy", ["full", "lora_all"])
def test_cuda_job_records_device_figures(tmp_path, precision, strategy):
    rec = run_job(compose_cfg([*ON_GPU, f"train.precision={precision}", f"strategy={strategy}"]), tmp_path)
    assert rec.status == "ok", rec.outcome and rec.outcome.reason
    m, t = rec.memory, rec.time
    assert rec.env.device == "cuda" and rec.env.cuda and t.sync == "step"
    assert m.device_peak_allocated_bytes > m.weights_bytes
    assert m.device_peak_reserved_bytes >= m.device_peak_allocated_bytes
    assert m.nvml_used_bytes is None or m.nvml_used_bytes >= m.device_peak_reserved_bytes
    phases = sum(getattr(t, f"{p}_ms").median for p in ("forward", "backward", "optimizer"))
    assert 0 < phases <= 1.05 * t.step_ms.median
    a = rec.attribution
    assert a.kernels > 0 and 0 <= a.categories["gpu_idle"] <= a.step_ms
    assert sum(v for k, v in a.categories.items() if k != "gpu_idle") == pytest.approx(a.step_ms, rel=0.05)


def test_cuda_windowed_timing(tmp_path):
    rec = run_job(compose_cfg([*ON_GPU, "strategy=lora_all", "train.steps=8", "train.sync_every=4"]), tmp_path)
    assert rec.status == "ok" and rec.time.sync == "window:4" and rec.time.timed_steps == 8
    timed = [r for r in read_steps(tmp_path / "steps.jsonl") if r["kind"] == "timed"]
    assert len(timed) == 8 and all(r["step_ms"] > 0 and r["forward_ms"] <= r["step_ms"] for r in timed)


def test_cuda_optimizer_state_bytes(tmp_path):
    rec = run_job(compose_cfg([*ON_GPU, "strategy=lora_qk"]), tmp_path)
    n_tensors = 2 * 2 * 2  # (A, B) x (wq, wk) x 2 blocks
    assert rec.memory.optimizer_state_bytes == 8 * rec.params.trainable + 4 * n_tensors


def test_cuda_and_cpu_count_the_same_matmul_work(tmp_path):
    cpu = run_job(compose_cfg([*FAST, "strategy=lora_all", "train.seq_len=8"]), tmp_path / "cpu")
    gpu = run_job(compose_cfg([*ON_GPU, "strategy=lora_all", "train.seq_len=8"]), tmp_path / "gpu")
    assert gpu.work.flops_per_step == pytest.approx(cpu.work.flops_per_step, rel=0.02)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("strategy", ["full", "lora_all"])
def test_cuda_graphs_replay_the_eager_training(tmp_path, precision, strategy):
    common = [*ON_GPU, f"strategy={strategy}", f"train.precision={precision}", "train.profile=false"]
    eager = run_job(compose_cfg(common), tmp_path / "eager")
    graphed = run_job(compose_cfg([*common, "train.cuda_graphs=true"]), tmp_path / "graphed")
    assert graphed.status == "ok", graphed.outcome and graphed.outcome.reason
    assert graphed.compile.mode == "cuda_graphs" and graphed.time.compile_s > 0
    assert graphed.work.ops_kind == "aten_captured"
    # The capture's warm-up iterations train too, so the trajectories are offset: compare the ends.
    assert graphed.loss.eval_end == pytest.approx(eager.loss.eval_end, abs=0.2)


def test_cuda_compiled_job(tmp_path):
    rec = run_job(compose_cfg([*ON_GPU, "strategy=lora_all", "train.compile=true"]), tmp_path)
    assert rec.status == "ok", rec.outcome and rec.outcome.reason
    assert rec.compile.recompiles_on_clock == 0 and rec.attribution.kernels > 0


def test_cuda_memory_budget_is_the_allocators_limit(tmp_path):
    rec = run_job(compose_cfg([*ON_GPU, "train.memory_budget_gb=0.001", "train.batch_size=64"]), tmp_path)
    assert rec.status == "oom" and rec.outcome.oom_where == "cuda"
