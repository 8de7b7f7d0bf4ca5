"""The accumulator: one training clock for train_s, elapsed_s, to_target_s and the eval curve."""
import math

import pytest

from bench.measure.figures import Diverged, JobFigures, stats
from bench.record.schema import Identity, Record


def _figures(target=None):
    return JobFigures(Record(status="error", identity=Identity(config_key="k"), config={}), 100, 1.0, target)


def test_the_clock_counts_warmup_and_timed_steps_only():
    f = _figures(target=2.5)
    f.on_step(0, "first", 4.0, {})
    f.on_step(1, "count", 3.9, {})
    f.on_eval(3.8)
    for i, (kind, ms) in enumerate([("warmup", 30.0), ("timed", 10.0), ("timed", 12.0), ("timed", 11.0)], 2):
        row = f.on_step(i, kind, 3.0 - 0.1 * i, {"step_ms": ms, "forward_ms": ms / 2})
        if i == 3:
            f.on_eval(2.4)
    f.on_eval(2.2, final=True)
    f.close()
    t, loss = f.rec.time, f.rec.loss
    assert t.train_s == pytest.approx(0.063) and t.timed_s == pytest.approx(0.033) and t.timed_steps == 3
    assert row["elapsed_s"] == pytest.approx(t.train_s)
    assert t.step_ms.median == 11.0 and t.forward_ms.median == 5.5 and t.backward_ms.median is None
    assert t.tokens_per_s == pytest.approx(100 / 0.011)
    assert [(e.step, e.elapsed_s) for e in f.rec.eval_curve] == [(2, 0.0), (4, pytest.approx(0.040)),
                                                               (6, pytest.approx(0.063))]
    assert (t.to_target_s, t.steps_to_target) == (pytest.approx(0.040), 4)
    assert (loss.first, loss.eval_start, loss.eval_end) == (4.0, 3.8, 2.2)


def test_a_non_finite_loss_raises_with_the_last_finite_one():
    f = _figures()
    f.on_step(0, "first", 4.0, {})
    with pytest.raises(Diverged) as e:
        f.on_step(1, "count", math.nan, {})
    assert (e.value.step, e.value.last_finite) == (1, 4.0)


def test_stats_of_a_known_sample():
    s = stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.median, s.mean, s.p10, s.p90) == (3.0, 22.0, pytest.approx(1.4), pytest.approx(61.6))
    assert stats([]).median is None and stats([5.0]).std == 0.0
