"""Ratios with uncertainty: a 95% interval for t_config / t_full, and the verdict it supports.

The calibrated interval (`estimate`): the noise that dominates a shared host lies between jobs
(its speed moves 10-30% from one job to the next while each job's steps stay tight), so the
interval is built from repeats, on the log scale, with a t quantile:
- paired (a LoRA job's own steps against full fine-tuning's, stepped in turn in the same job:
  bench/measure/paired.py): each repeat gives the median of its pairs' log ratios; the estimate
  is their mean, its standard error the between-repeat spread over sqrt(repeats);
- by job (no pairs: compiled, several processes, older records): each repeat gives its log median
  step; the estimate is the difference of the two sides' means.
The between-repeat variance is pooled over the setting's configurations (assumed alike across
them), which gives the t quantile its degrees of freedom. A sweep's repeats lie within a minute;
the machine's noise between runs (bench/report/noise.py, measured by benchmarks/coverage.py) is
added where it is filed. With a single repeat and no such term there is no between-job
information at all: the interval then comes from the job's own steps (below), is marked
uncalibrated, and no verdict is drawn from it. benchmarks/coverage.py checks the coverage these intervals achieve.

The within-job interval is a hierarchical percentile bootstrap. Each resample draws the repeats of each
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

import math
from dataclasses import dataclass

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


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (p >= 0.5), by bisection on its CDF, integrated by Simpson's rule (no
    SciPy). Tested against the tables: t(0.975, 1) = 12.706, t(0.975, 10) = 2.228."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float) -> float:
        u = np.linspace(0.0, x, 2001)
        f = c * (1 + u * u / df) ** (-(df + 1) / 2)
        return 0.5 + (x / 6000) * (f[0] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum() + f[-1])

    lo, hi = 0.0, 1000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def pooled_variance(groups: list[np.ndarray]) -> tuple[float, int]:
    """The between-repeat variance pooled over groups (each a configuration's per-repeat values),
    and its degrees of freedom; (nan, 0) where no group has two repeats."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) > 1]
    df = sum(len(g) - 1 for g in groups)
    if df == 0:
        return float("nan"), 0
    return float(sum(((g - g.mean()) ** 2).sum() for g in groups) / df), df


@dataclass
class Estimate:
    """A configuration's ratio to full fine-tuning with its 95% interval, and what they rest on."""
    ratio: float
    lo: float
    hi: float
    calibrated: bool  # the interval includes the noise between jobs (two or more repeats)
    basis: str        # "paired" | "by job"
    repeats: int
    se: float = float("nan")       # standard error of the log ratio (t intervals)
    df: int = 0                    # its degrees of freedom
    rep_var: float = float("nan")  # the between-repeat variance it used (pooled over the setting)


def _t_interval(center: float, var_of_mean: float, df: int) -> tuple[float, float]:
    half = t_quantile(0.5 + LEVEL / 2, df) * math.sqrt(var_of_mean)
    return math.exp(center - half), math.exp(center + half)


def paired_estimate(repeat_logs: list[np.ndarray], pooled: tuple[float, int], noise=None) -> Estimate:
    """From each repeat's per-pair log ratios; `pooled`: pooled_variance over the setting's paired
    configurations' repeat medians; `noise`: the machine's between-run term (bench/report/noise.py),
    added to the variance, and standing in for the pool where this sweep has one repeat only."""
    m = np.array([np.median(x) for x in repeat_logs])
    center, n = float(m.mean()), len(m)
    var, df = pooled
    tau2 = noise.tau2 if noise is not None else 0.0
    # Never narrower than the machine's own between-repeat noise (its filed estimate has hundreds of
    # degrees of freedom; a sweep's pool has a few dozen, and one that happens to be quiet would
    # give intervals too narrow for the next run); wider when this sweep is noisier.
    if noise is not None and (df == 0 or noise.rep_var > var):
        var, df = noise.rep_var, noise.df
    if df == 0:  # one repeat and no term for this machine: the pairs of one job only
        rng = np.random.default_rng(_SEED)
        x = repeat_logs[0]
        boot = np.median(x[rng.integers(0, len(x), size=(RESAMPLES, len(x)))], axis=1)
        tail = (1 - LEVEL) / 2 * 100
        lo, hi = np.exp(np.percentile(boot, [tail, 100 - tail]))
        return Estimate(math.exp(center), float(lo), float(hi), False, "paired", n)
    lo, hi = _t_interval(center, var / n + tau2, df)
    return Estimate(math.exp(center), lo, hi, True, "paired", n, math.sqrt(var / n + tau2), df, var)


def job_estimate(config_ms: list[float], full_ms: list[float], pooled: tuple[float, int],
                 config_steps: list[np.ndarray], full_steps: list[np.ndarray], noise=None) -> Estimate | None:
    """Jobs compared with jobs: each side's median step per repeat; `pooled`: pooled_variance over
    the setting's per-repeat log medians; `noise`: the machine's between-run term, added. With one
    repeat everywhere, the interval comes from the timed steps (one array per repeat) and is not
    calibrated (the machine's term was measured on paired ratios, far quieter than job medians)."""
    yc, yf = np.log(np.asarray(config_ms, dtype=float)), np.log(np.asarray(full_ms, dtype=float))
    if not len(yc) or not len(yf):
        return None
    center = float(yc.mean() - yf.mean())
    var, df = pooled
    if df == 0:
        interval = ratio_interval(config_steps, full_steps)
        if interval is None:
            return None
        return Estimate(math.exp(center), *interval, False, "by job", len(yc))
    tau2 = noise.tau2 if noise is not None else 0.0
    v = var * (1 / len(yc) + 1 / len(yf)) + tau2
    lo, hi = _t_interval(center, v, df)
    return Estimate(math.exp(center), lo, hi, True, "by job", len(yc), math.sqrt(v), df, var)


def verdict(ratio: float, interval: tuple[float, float] | None, calibrated: bool = True) -> str:
    """"slower", "faster", "same" (no measurable difference) by the rule above, or "unjudged"
    where the interval is not calibrated (one repeat: nothing measured the noise between jobs)."""
    if interval is None or ratio != ratio:
        return "same"
    if not calibrated:
        return "unjudged"
    lo, hi = interval
    if lo > 1 and ratio >= 1 + MIN_EFFECT:
        return "slower"
    if hi < 1 and ratio <= 1 - MIN_EFFECT:
        return "faster"
    return "same"
