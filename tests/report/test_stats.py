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
