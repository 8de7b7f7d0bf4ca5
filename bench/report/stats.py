"""Ratios with uncertainty: a 95% interval for t_config / t_full, and the verdict it supports.

The interval is a hierarchical percentile bootstrap. Each resample draws the repeats of each
side with replacement, then the timed steps within each drawn repeat with replacement; a side's
time is the median over its repeats of the median step; the ratio of the two sides is one
resample. With one repeat this is a bootstrap over steps; with several, the spread between
repeats (a machine's drift from job to job) widens the interval as it should. The seed is fixed,
so a rebuilt report prints the same interval.

A verdict follows the interval: "slower" only when the whole interval lies above 1 and the
point ratio is at least 1 + MIN_EFFECT; "faster" only when the interval lies below 1 and the
ratio is at most 1 - MIN_EFFECT; otherwise "no measurable difference".
"""
from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
MIN_EFFECT = 0.05  # a 5% difference is the smallest this harness calls a finding
_SEED = 20_241_188


def median_interval(ratios: np.ndarray, level: float = 0.90) -> tuple[float, float]:
    """Bootstrap interval of the median of paired ratios (step-interleaved benchmarks)."""
    rng = np.random.default_rng(0)
    boot = np.median(rng.choice(ratios, size=(RESAMPLES, ratios.size)), axis=1)
    return float(np.percentile(boot, 50 * (1 - level))), float(np.percentile(boot, 50 * (1 + level)))


def _side(samples: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """RESAMPLES bootstrap values of median-over-repeats of median-step."""
    picks = rng.integers(0, len(samples), size=(RESAMPLES, len(samples)))
    per_repeat = np.empty((len(samples), RESAMPLES))
    for j, steps in enumerate(samples):
        idx = rng.integers(0, len(steps), size=(RESAMPLES, len(steps)))
        per_repeat[j] = np.median(steps[idx], axis=1)
    return np.median(per_repeat[picks, np.arange(RESAMPLES)[:, None]], axis=1)


def ratio_interval(config: list[np.ndarray], full: list[np.ndarray]) -> tuple[float, float] | None:
    """The 95% interval of t_config / t_full from each side's timed steps, one array per repeat;
    None where a side has no steps."""
    config = [np.asarray(s, dtype=float) for s in config if len(s)]
    full = [np.asarray(s, dtype=float) for s in full if len(s)]
    if not config or not full:
        return None
    rng = np.random.default_rng(_SEED)
    ratios = _side(config, rng) / _side(full, rng)
    tail = (1 - LEVEL) / 2 * 100
    return float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))


def verdict(ratio: float, interval: tuple[float, float] | None) -> str:
    """"slower", "faster" or "same" (no measurable difference), by the rule above."""
    if interval is None or ratio != ratio:
        return "same"
    lo, hi = interval
    if lo > 1 and ratio >= 1 + MIN_EFFECT:
        return "slower"
    if hi < 1 and ratio <= 1 - MIN_EFFECT:
        return "faster"
    return "same"
