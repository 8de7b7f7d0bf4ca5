"""train.cuda_graphs: the capture-and-replay logic, on a CPU with a backend that re-runs the step
where CUDA would replay it. What a CPU cannot test (the capture itself) runs in tests/test_cuda.py."""
import pytest

from bench.measure.graphs import GraphedStep
from bench.measure.timer import StepTimer
from tests.conftest import FAST, built, run_cli, trainer_of, ROOT


class Rerun:
    """Captures by running the body once; replays by running it again on the same static inputs."""
    updates = 1

    def capture(self, body):
        out = {"loss": body()}

        def replay():
            out["loss"].copy_(body())
        return replay, out["loss"]


def test_replayed_steps_train_exactly_like_eager_steps():
    """Each step's batch reaches the captured step through its static inputs: replaying with new
    batches gives the eager trainer's losses, step by step."""
    overrides = ["strategy=lora_all", "lora.alpha=16", "train.batch_size=2", "train.seq_len=16", "train.grad_accum=2"]
    cfg, s = built(*overrides)
    eager = trainer_of(cfg, s)
    batches = list(s.train_batches(cfg, 5))
    timer = StepTimer(batches[0][0].device, phases=False)
    expected = [eager.step(m, timer)[0] for m in batches]

    cfg, s = built(*overrides)
    graphed = GraphedStep(trainer_of(cfg, s), batches[0], backend=Rerun())  # capture = step 1
    got = [expected[0]] + [graphed.step(m, timer)[0] for m in batches[1:]]
    assert got == pytest.approx(expected, abs=1e-6)


def test_a_replay_reports_the_whole_step_only():
    cfg, s = built("train.batch_size=2", "train.seq_len=16")
    micro = next(s.train_batches(cfg, 1))
    graphed = GraphedStep(trainer_of(cfg, s), micro, backend=Rerun())
    loss, timings = graphed.step(micro, StepTimer(micro[0].device, phases=True), defer_loss=True)
    assert set(timings) == {"step_ms"} and loss.ndim == 0


def test_cuda_graphs_on_cpu_is_one_line_and_a_non_zero_exit(tmp_path):
    r = run_cli([*FAST, "train.cuda_graphs=true", f"hydra.run.dir={tmp_path}"], cwd=ROOT)
    assert r.returncode != 0
    assert "train.cuda_graphs: CUDA graphs need a CUDA device; this job runs on cpu" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("overrides,message", [
    (["train.cuda_graphs=true", "train.compile=true"], "train.cuda_graphs: captures the eager step"),
    (["train.cuda_graphs=true", "train.precision=fp16"], "train.cuda_graphs: fp16's grad scaler"),
])
def test_combinations_cuda_graphs_cannot_run_are_refused(cfg_of, overrides, message):
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        cfg_of(*overrides)
