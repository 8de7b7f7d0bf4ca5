"""The ratio's interval and the verdict rule, on samples with a known answer."""
import numpy as np
import pytest

from bench.report.stats import MIN_EFFECT, ratio_interval, verdict


def _steps(median, spread, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return median + spread * rng.standard_normal(n)


def test_the_interval_covers_the_true_ratio_and_narrows_with_less_noise():
    wide = ratio_interval([_steps(30, 3)], [_steps(20, 2, seed=1)])
    tight = ratio_interval([_steps(30, 0.3)], [_steps(20, 0.2, seed=1)])
    assert wide[0] < 1.5 < wide[1] and tight[0] < 1.5 < tight[1]
    assert tight[1] - tight[0] < (wide[1] - wide[0]) / 3
    assert ratio_interval([_steps(30, 3)], [_steps(20, 2, seed=1)]) == wide  # a fixed seed: rebuilds agree


def test_repeats_that_disagree_widen_the_interval():
    one = ratio_interval([_steps(30, 0.3)], [_steps(20, 0.2, seed=1)])
    drifting = ratio_interval([_steps(30, 0.3), _steps(36, 0.3, seed=2), _steps(26, 0.3, seed=3)],
                              [_steps(20, 0.2, seed=1)])
    assert drifting[1] - drifting[0] > 5 * (one[1] - one[0])


def test_no_steps_no_interval():
    assert ratio_interval([np.array([])], [_steps(20, 1)]) is None
    assert verdict(1.5, None) == "same"


@pytest.mark.parametrize("ratio, interval, expected", [
    (1.5, (1.4, 1.6), "slower"), (0.5, (0.45, 0.55), "faster"),
    (1.2, (0.95, 1.5), "same"),                       # the interval straddles 1
    (1 + MIN_EFFECT / 2, (1.01, 1.04), "same"),       # above 1, but below the minimum effect
    (1 - MIN_EFFECT / 2, (0.96, 0.99), "same"),
])
def test_the_verdict_rule(ratio, interval, expected):
    assert verdict(ratio, interval) == expected


def test_median_interval_holds_the_median_of_paired_ratios():
    from bench.report.stats import median_interval

    ratios = np.array([0.90, 0.92, 0.93, 0.93, 0.94, 0.95, 0.97, 1.10] * 5)
    lo, hi = median_interval(ratios)
    assert lo <= np.median(ratios) <= hi and 0.90 <= lo and hi <= 1.10
    assert median_interval(np.full(20, 0.8)) == (0.8, 0.8)  # no spread, no interval


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None, derandomize=True)
@given(ratio=st.floats(0.2, 5.0), spread=st.floats(0.0, 0.3), repeats=st.integers(1, 4),
       paired=st.booleans(), seed=st.integers(0, 10_000))
def test_a_verdict_never_contradicts_its_interval(tmp_path_factory, ratio, spread, repeats, paired, seed):
    """Generated records (either comparison, any noise): slower only above 1 by the margin,
    faster only below, and never a verdict from one uncalibrated repeat."""
    from bench.report.explain import aggregate
    from bench.report.load import load_records
    from tests.fixtures import paired as with_pairs, record, write

    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("gen")
    for r in range(repeats):
        f = float(np.exp(rng.normal(0, spread)))
        write(root, f"f{r}", record(step=20.0 * f, spread=(19.0 * f, 21.0 * f), repeat=r))
        step = 20.0 * ratio * float(np.exp(rng.normal(0, spread)))
        rec = record(strategy="lora_all", rank=8, step=step, spread=(0.95 * step, 1.05 * step), repeat=r)
        if paired:
            rec = with_pairs(rec, list(ratio * np.exp(rng.normal(0, spread / 3 + 1e-3, size=5))))
        write(root, f"l{r}", rec)
    row = aggregate(load_records([root]), host_noise=False).set_index("label").loc["lora_all r=8"]
    if row.verdict == "slower":
        assert row.vs_full_lo > 1 and row.vs_full >= 1.05
    elif row.verdict == "faster":
        assert row.vs_full_hi < 1 and row.vs_full <= 0.95
    if not row.calibrated:
        assert row.verdict == "unjudged"
    assert row.vs_full_lo <= row.vs_full <= row.vs_full_hi
