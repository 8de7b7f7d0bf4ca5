
from bench.report.explain import aggregate, explain, unstable_jobs, verdict
from bench.report.load import load_records
import numpy as np
import pytest

from tests.fixtures import FAST_BY_OPTIMIZER, FULL_BIG_OPT, SLOW_BY_OPS, paired, record, repeats, write


def _agg(tmp_path, *recs):
    flat = [r for rec in recs for r in (rec if isinstance(rec, list) else [rec])]
    for i, rec in enumerate(flat):
        write(tmp_path, str(i), rec)
    return aggregate(load_records([tmp_path])).set_index("label", drop=False)


def test_slower_because_of_extra_operations(tmp_path):
    agg = _agg(tmp_path, repeats(), repeats(**SLOW_BY_OPS))
    text = explain(agg.loc["lora_all r=8"], agg.loc["full"])
    assert "1.50x slower than full fine-tuning" in text
    assert "the extra operations (+10.00 ms)" in text      # the dominant term, priced
    assert "FLOPs -3.00 ms" in text and "200% more operations" in text
    assert "predicts 1.47x" in text and "disagree" not in text  # (7 + 15) / (10 + 5)


def test_faster_because_of_the_optimizer(tmp_path):
    agg = _agg(tmp_path, repeats(**FULL_BIG_OPT), repeats(**FAST_BY_OPTIMIZER))
    text = explain(agg.loc["lora_qk r=8"], agg.loc["full"])
    assert "1.54x faster than full fine-tuning" in text
    assert "the optimizer time it saves (-7.00 ms)" in text
    # The cost model (FLOPs and ops only) does not see the optimizer: it must say so.
    assert "disagree by more than 20%" in text


def test_overlapping_spreads_are_no_measurable_difference(tmp_path):
    agg = _agg(tmp_path, repeats(jitter=0.1, spread=(18, 24)),
               repeats(jitter=0.1, strategy="lora_qk", rank=2, step=21.0, spread=(19, 25)))
    assert "no measurable difference" in explain(agg.loc["lora_qk r=2"], agg.loc["full"])


def test_one_repeat_is_not_judged(tmp_path):
    # Tight steps, 1.5x: but nothing measured the noise between jobs.
    agg = _agg(tmp_path, record(), record(**SLOW_BY_OPS))
    row = agg.loc["lora_all r=8"]
    assert row.verdict == "unjudged" and not row.calibrated and row.vs_full_lo > 1.4
    text = explain(row, agg.loc["full"])
    assert "lora_all r=8: not judged (30.00 vs 20.00 ms per step, 1.50x" in text and "1 repeat, by job" in text
    assert "repeats=2 or more measures it" in text and "Slower than" not in verdict(agg)


def test_paired_repeats_give_the_ratio_and_a_t_interval_over_repeats(tmp_path):
    # Each repeat's pairs: median ratio 1.10, 1.12, 1.14; the job-level step times say 1.5x.
    recs = [paired(r, [m - 0.01, m, m + 0.01]) for r, m in zip(repeats(**SLOW_BY_OPS), (1.10, 1.12, 1.14))]
    agg = _agg(tmp_path, repeats(), recs)
    row = agg.loc["lora_all r=8"]
    assert row.compared == "paired" and row.calibrated and row.verdict == "slower"
    logs = np.log([1.10, 1.12, 1.14])
    # The pool is the paired configurations' repeat medians: this one only, 2 degrees of freedom.
    half = 4.3027 * logs.std(ddof=1) / np.sqrt(3)
    assert row.vs_full == pytest.approx(np.exp(logs.mean()))
    assert (row.vs_full_lo, row.vs_full_hi) == pytest.approx(np.exp([logs.mean() - half, logs.mean() + half]), rel=1e-3)
    assert "3 repeats, paired" in explain(row, agg.loc["full"])


def test_repeats_are_aggregated_and_full_is_one_row(tmp_path):
    agg = _agg(tmp_path, record(step=20, repeat=0), record(step=22, repeat=1), record(step=30, repeat=2),
               record(**SLOW_BY_OPS))
    assert list(agg.label) == ["full", "lora_all r=8"]
    full = agg.loc["full"]
    assert full.repeats == 3 and full.step_ms == 22 and (full.spread_lo, full.spread_hi) == (20, 30)
    # Job against job: the ratio of the sides' geometric means over repeats.
    assert agg.loc["lora_all r=8"].vs_full == pytest.approx(30 / (20 * 22 * 30) ** (1 / 3))


def test_verdict_names_fastest_least_memory_and_slow_lora(tmp_path):
    agg = _agg(tmp_path, repeats(), repeats(**SLOW_BY_OPS), repeats(**FAST_BY_OPTIMIZER))
    text = verdict(agg)
    assert "Fastest: lora_qk r=8 (13.00 ms" in text
    # Both LoRA configurations hold exactly the same bytes: a tie, not a winner.
    assert "Least memory: a tie between 2 configurations (lora_all r=8, lora_qk r=8) (" in text
    assert "Slower than full fine-tuning: lora_all r=8 (1.50x, 95% interval 1.4" in text
    assert "largest cost: the extra operations (cost model))" in text


def test_a_small_or_uncertain_difference_is_no_verdict(tmp_path):
    # 3% slower with tight steps: the interval lies above 1, but the effect is under the 5% minimum.
    agg = _agg(tmp_path, repeats(jitter=0.001, spread=(19.9, 20.1)),
               repeats(jitter=0.001, strategy="lora_qk", rank=8, step=20.6, spread=(20.5, 20.7)))
    row = agg.loc["lora_qk r=8"]
    assert row.vs_full_lo > 1 and row.verdict == "same"
    assert "no measurable difference" in explain(row, agg.loc["full"])
    assert "cannot tell them apart" in explain(row, agg.loc["full"])


def test_unstable_jobs_take_no_part_and_are_named(tmp_path):
    busy = {"unstable": True, "reason": "its threads waited for a CPU 70% of the time (limit 10%)", "steps": 11}
    write(tmp_path, "0", record())
    write(tmp_path, "1", record(strategy="lora_qk", rank=8, step=400.0, spread=(30.0, 900.0), stability=busy,
                                identity={**record(strategy="lora_qk", rank=8)["identity"],
                                          "overrides": ["strategy=lora_qk", "lora.rank=8"]}))
    df = load_records([tmp_path])
    agg = aggregate(df)
    # Kept in the tables, marked, and out of every verdict.
    assert list(agg.label) == ["full", "lora_qk r=8 (disturbed)"] and agg.verdict.iloc[1] == "disturbed"
    assert "slower" not in verdict(agg).lower().replace("measurably slower", "")
    assert "Fastest: full" in verdict(agg)
    (line,) = unstable_jobs(df)
    assert "waited for a CPU 70%" in line and "no repeat of it was measured on a quiet machine" in line
    # The advised command measures it again in its own folder, so the sweep's report is rebuilt with it.
    assert line.endswith(f"python -m bench.run -m strategy=lora_qk lora.rank=8 resume=false hydra.sweep.dir={tmp_path} "
                         f"hydra.sweep.subdir=1")


def test_best_loss_per_second_needs_a_clear_drop(tmp_path):
    loss = lambda start, end, noise: {"first": 5.5, "last": 4.0, "eval_start": start, "eval_end": end,  # noqa: E731
                                      "floor": 1.0, "eval_noise": noise}
    agg = _agg(tmp_path, record(loss=loss(5.0, 5.01, 0.01)),                      # rose: never wins
               record(**FAST_BY_OPTIMIZER, loss=loss(5.0, 4.999, 0.01)),          # within the noise
               record(**SLOW_BY_OPS, loss=loss(5.0, 4.5, 0.01)))                  # a clear drop
    assert "Best loss per second: lora_all r=8 (" in verdict(agg) and "only the 1 of 3" in verdict(agg)
    agg = _agg(tmp_path / "none", record(loss=loss(5.0, 5.01, 0.01)), record(**SLOW_BY_OPS, loss=loss(5.0, 4.99, 0.01)))
    assert "No loss verdict: no configuration's eval loss fell by more than twice" in verdict(agg)


def test_an_unstable_full_job_is_named_without_a_rank(tmp_path):
    # Only full fine-tuning in the sweep: the rank column holds None, not NaN (CI found this).
    busy = {"unstable": True, "reason": "its threads waited for a CPU 58% of the time (limit 10%)", "steps": 3}
    write(tmp_path, "0", record(stability=busy))
    write(tmp_path, "1", record(status="invalid", reason="train.lr: must be > 0"))
    (line,) = unstable_jobs(load_records([tmp_path]))
    assert ": full was left out (repeat 0: its threads waited" in line and "in no verdict" in line
    assert line.endswith(f"python -m bench.run -m strategy=full resume=false hydra.sweep.dir={tmp_path} hydra.sweep.subdir=0")


def test_a_busy_repeat_of_a_configuration_with_quiet_ones_says_its_verdict_stands(tmp_path):
    busy = {"unstable": True, "reason": "its threads waited for a CPU 30% of the time (limit 10%)", "steps": 11}
    for i, kw in enumerate([dict(repeat=0), dict(repeat=1), dict(repeat=2, stability=busy)]):
        write(tmp_path, str(i), record(**kw))
    (line,) = unstable_jobs(load_records([tmp_path]))
    assert ": full was left out (repeat 2:" in line and "its other 2 repeats carry the configuration's verdict" in line
