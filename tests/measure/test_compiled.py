"""train.compile: compiled jobs run, record their compile time off the clock, say what was compiled,
and train the same model as eager (the compiled graph computes the same losses)."""
import pytest

from bench.job import run_job
from bench.record.store import STEPS, read_steps
from tests.conftest import FAST, compose_cfg

SMALL = [*FAST, "model.n_layers=1", "model.dim=64", "train.steps=4"]


def _job(tmp_path, name, *overrides):
    return run_job(compose_cfg([*SMALL, *overrides]), tmp_path / name)


def _losses(tmp_path, name):
    # The protocol's steps (a compiled job has no paired baseline: bench/measure/paired.py).
    return [r["loss"] for r in read_steps(tmp_path / name / STEPS) if r["kind"] != "paired"]


@pytest.mark.parametrize("strategy", ["full", "lora_all"])
def test_compiled_job_records_its_compilation_and_trains_like_eager(tmp_path, strategy):
    eager = _job(tmp_path, "eager", f"strategy={strategy}", "lora.alpha=16")
    compiled = _job(tmp_path, "compiled", f"strategy={strategy}", "lora.alpha=16", "train.compile=true",
                    "train.compile_cache=false")
    assert compiled.status == "ok", compiled.outcome
    c = compiled.compile
    assert c.mode == "torch.compile" and c.graphs >= 1 and c.graph_breaks == 0
    assert c.recompiles_on_clock == 0  # the warm-up covered every compilation
    assert c.cache_hits == 0 and c.compiler_s > 0  # a cold compile, as asked
    # The compiling step's extra time is the compiler's (both clocks run on this host, busy or not),
    # in its own field, off the timed steps' clock.
    assert compiled.time.compile_s > 0.5 * c.compiler_s
    assert compiled.time.timed_s + compiled.time.compile_s <= compiled.time.wall_s
    assert eager.compile is None and eager.time.compile_s is None and eager.work.ops_kind == "aten"
    # Under compile the operation count is the profiled step's top-level calls, graphs included.
    assert compiled.work.ops_kind == "profiled"
    assert compiled.work.ops_per_step == sum(compiled.attribution.ops.values())
    assert compiled.attribution.ops["compiled"] >= 2  # the forward graph and its backward
    assert compiled.work.ops_per_step < eager.work.ops_per_step
    # FLOPs are the same math whichever way it runs.
    assert compiled.work.flops_per_step == eager.work.flops_per_step
    assert _losses(tmp_path, "compiled") == pytest.approx(_losses(tmp_path, "eager"), abs=1e-4)


def test_fused_layer_compiles_without_graph_breaks(tmp_path):
    rec = _job(tmp_path, "fused", "strategy=lora_qk", "lora.impl=fused", "train.compile=true")
    assert rec.status == "ok", rec.outcome
    assert rec.compile.graph_breaks == 0, rec.compile.break_reasons


def test_peft_model_compiles(tmp_path):
    pytest.importorskip("peft")
    rec = _job(tmp_path, "peft", "strategy=lora_qk", "lora.backend=peft", "train.compile=true")
    assert rec.status == "ok", rec.outcome
    assert rec.compile.graphs >= 1 and rec.time.compile_s > 0


def test_a_compilation_on_the_clock_takes_the_job_out_of_the_verdicts():
    from bench.measure.compiled import judge_clock
    from bench.record.schema import Compile, Stability

    quiet = Stability(unstable=False)
    judge_clock(quiet, Compile(mode="torch.compile", what="model", recompiles_on_clock=0))
    assert not quiet.unstable
    busy = Stability(unstable=True, reason="its steps drifted by +30%")
    judge_clock(busy, Compile(mode="torch.compile", what="model", recompiles_on_clock=2))
    assert busy.unstable and busy.reason.endswith("compiled 2 graph(s) after the untimed steps (raise train.warmup_steps)")
    late = Stability(unstable=False)
    judge_clock(late, Compile(mode="torch.compile", what="model", recompiles_on_clock=1))
    assert late.unstable and late.reason.startswith("torch.compile compiled 1 graph(s)")
