"""The measurement protocol: the order of steps, what is counted where, and the evaluations."""
import torch

from bench.measure.counters import StepCounts
from bench.measure.protocol import measure, step_kind
from bench.measure.timer import StepTimer
from bench.record.schema import Identity, Record
from bench.record.store import read_steps
from tests.conftest import FAST, built, trainer_of


def _measured(tmp_path, *overrides):
    cfg, s = built(*FAST, *overrides)
    rec = Record(status="error", identity=Identity(config_key="k"), config={})
    measure(cfg, s, tmp_path, rec)
    return cfg, rec, read_steps(tmp_path / "steps.jsonl")


def test_step_kinds_in_order():
    assert [step_kind(i, 2) for i in range(6)] == ["first", "count", "warmup", "warmup", "timed", "timed"]
    assert [step_kind(i, 0) for i in range(3)] == ["first", "count", "timed"]
    assert [step_kind(i, 1, profile=True) for i in range(5)] == ["first", "count", "profile", "warmup", "timed"]


def test_the_counted_step_is_a_steady_state_step(tmp_path):
    cfg, rec, _ = _measured(tmp_path, "strategy=lora_all")
    _, s = built(*FAST, "strategy=lora_all")
    trainer = trainer_of(cfg, s)
    ops = []
    for micro in s.train_batches(cfg, 3):
        with StepCounts(s.model) as probe:
            trainer.step(micro, StepTimer(torch.device("cpu"), phases=False), probe)
        ops.append(probe.ops)
    assert rec.work.counted_step == 1 and rec.work.ops_per_step == ops[1] == ops[2] < ops[0]


def test_periodic_evaluations_run_on_the_clock(tmp_path):
    cfg, rec, steps = _measured(tmp_path, "train.steps=6", "train.warmup_steps=1", "train.eval_every=2",
                                "train.profile=false")
    # eval_start after steps 0-1, then every 2 clock steps (not on the last: the final eval covers it).
    assert [e.step for e in rec.eval_curve] == [2, 4, 6, 8, 9]
    elapsed = {s["step"] + 1: s["elapsed_s"] for s in steps if s.get("elapsed_s") is not None}
    assert [e.elapsed_s for e in rec.eval_curve[1:]] == [elapsed[4], elapsed[6], elapsed[8], elapsed[9]]
    assert rec.time.train_s == elapsed[9] and rec.calibration.matmul_flops_per_s > 0
    # With the profiled step: two more updates (the profiler's warm-up and the profiled step).
    (tmp_path / "p").mkdir()
    _, rec, _ = _measured(tmp_path / "p", "train.steps=6", "train.warmup_steps=1", "train.eval_every=2")
    assert [e.step for e in rec.eval_curve] == [4, 6, 8, 10, 11] and rec.attribution is not None


def test_the_memory_split_follows_the_closed_forms(tmp_path):
    cfg, s = built(*FAST, "strategy=lora_qk")
    rec = Record(status="error", identity=Identity(config_key="k"), config={})
    measure(cfg, s, tmp_path, rec)
    tensors = [p for p in s.model.parameters() if p.requires_grad]
    # AdamW: two fp32 moments per trainable parameter and one fp32 step per tensor; fp32 gradients.
    assert rec.memory.optimizer_state_bytes == 8 * rec.params.trainable + 4 * len(tensors)
    assert rec.memory.grads_bytes == 4 * rec.params.trainable
    assert rec.memory.weights_bytes == 4 * rec.params.total and rec.memory.host_peak_rss_bytes > 0
