"""The machine's between-run noise: filed, read by machine label, added to intervals, expiring."""
import math
import time

import numpy as np
import pytest

from bench.report import noise, stats


def _noise(**kw):
    base = dict(machine="Test CPU (2 threads)", tau2=0.02 ** 2, rep_var=0.03 ** 2, df=200, runs=16,
                measured=time.strftime("%Y-%m-%d"), how="the README sweep")
    return noise.HostNoise(**{**base, **kw})


def test_a_term_is_filed_and_read_back_by_its_machine_label(tmp_path):
    path = noise.write(_noise(), tmp_path)
    assert path.name == "test-cpu-2-threads.json"
    assert noise.read("Test CPU (2 threads)", tmp_path) == _noise()
    assert noise.read("Another machine", tmp_path) is None and noise.read(None, tmp_path) is None
    assert "2.0%" in noise.sentence(_noise(), "Test CPU (2 threads)")
    assert "No between-run noise term is filed" in noise.sentence(None, "x")


def test_an_old_term_expires_and_is_not_applied():
    old = _noise(measured="2026-01-01")
    assert old.expired(time.mktime(time.strptime("2026-03-01", "%Y-%m-%d")))
    assert noise.usable(old) is None or not old.expired()
    assert "older than 30 days and is not applied" in noise.sentence(_noise(measured="2000-01-01"), "m")


def test_the_term_widens_a_paired_interval_by_its_closed_form():
    logs = [np.log([r] * 5) for r in (1.10, 1.12, 1.14)]  # three repeats, tight pairs
    m = np.log([1.10, 1.12, 1.14])
    pooled = (float(m.var(ddof=1)), 2)
    bare = stats.paired_estimate(logs, pooled)
    # The machine's between-repeat variance (0.03^2) is larger than this pool: it stands in, with its df.
    e = stats.paired_estimate(logs, pooled, _noise())
    se = math.sqrt(0.03 ** 2 / 3 + 0.02 ** 2)
    half = stats.t_quantile(0.975, 200) * se
    assert e.se == pytest.approx(se) and e.df == 200
    assert (e.lo, e.hi) == pytest.approx((math.exp(m.mean() - half), math.exp(m.mean() + half)))
    assert e.hi - e.lo > 0 and bare.df == 2


def test_one_repeat_is_judged_with_the_machines_term_and_not_without():
    logs = [np.log(np.full(8, 1.2))]
    assert not stats.paired_estimate(logs, (float("nan"), 0)).calibrated
    e = stats.paired_estimate(logs, (float("nan"), 0), _noise())
    assert e.calibrated and e.se == pytest.approx(math.sqrt(0.03 ** 2 + 0.02 ** 2))
    assert stats.verdict(e.ratio, (e.lo, e.hi), e.calibrated) == "slower"
