
from bench.report.explain import aggregate, explain, verdict
from bench.report.load import load_records
from tests.fixtures import FAST_BY_OPTIMIZER, FULL_BIG_OPT, SLOW_BY_OPS, record, write


def _agg(tmp_path, *recs):
    for i, rec in enumerate(recs):
        write(tmp_path, str(i), rec)
    return aggregate(load_records([tmp_path])).set_index("label", drop=False)


def test_slower_because_of_extra_operations(tmp_path):
    agg = _agg(tmp_path, record(), record(**SLOW_BY_OPS))
    text = explain(agg.loc["lora_all r=8"], agg.loc["full"])
    assert "1.50x slower than full fine-tuning" in text
    assert "the extra operations (+10.00 ms)" in text      # the dominant term, priced
    assert "FLOPs -3.00 ms" in text and "200% more operations" in text
    assert "predicts 1.47x" in text and "disagree" not in text  # (7 + 15) / (10 + 5)


def test_faster_because_of_the_optimizer(tmp_path):
    agg = _agg(tmp_path, record(**FULL_BIG_OPT), record(**FAST_BY_OPTIMIZER))
    text = explain(agg.loc["lora_qk r=8"], agg.loc["full"])
    assert "1.54x faster than full fine-tuning" in text
    assert "the optimizer time it saves (-7.00 ms)" in text
    # The cost model (FLOPs and ops only) does not see the optimizer: it must say so.
    assert "disagree by more than 20%" in text


def test_overlapping_spreads_are_no_measurable_difference(tmp_path):
    agg = _agg(tmp_path, record(spread=(18, 24)), record(strategy="lora_qk", rank=2, step=21.0, spread=(19, 25)))
    assert "no measurable difference" in explain(agg.loc["lora_qk r=2"], agg.loc["full"])


def test_repeats_are_aggregated_and_full_is_one_row(tmp_path):
    agg = _agg(tmp_path, record(step=20, repeat=0), record(step=22, repeat=1), record(step=30, repeat=2),
               record(**SLOW_BY_OPS))
    assert list(agg.label) == ["full", "lora_all r=8"]
    full = agg.loc["full"]
    assert full.repeats == 3 and full.step_ms == 22 and (full.spread_lo, full.spread_hi) == (20, 30)
    assert agg.loc["lora_all r=8"].vs_full == 30 / 22


def test_verdict_names_fastest_least_memory_and_slow_lora(tmp_path):
    agg = _agg(tmp_path, record(), record(**SLOW_BY_OPS), record(**FAST_BY_OPTIMIZER))
    text = verdict(agg)
    assert "Fastest: lora_qk r=8 (13.00 ms" in text
    assert "Least memory: lora_" in text
    assert "Slower than full fine-tuning: lora_all r=8 (1.50x; largest cost: the extra operations)" in text
