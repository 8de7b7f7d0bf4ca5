"""The memory-budget search: its probe sequence (a pure function), and a real search whose every
probe is a job record, the oom ones included."""
import pytest

from bench.job import run_job
from bench.report.load import load_records
from bench.search import next_batch
from tests.conftest import FAST, compose_cfg


def _sequence(limit: int, start: int, max_batch: int, max_probes: int = 20) -> list[int]:
    """The probes the search makes when every batch up to `limit` fits."""
    fits, out = {}, []
    while len(out) < max_probes and (b := next_batch(fits, start, max_batch)) is not None:
        fits[b] = b <= limit
        out.append(b)
    return out


def test_doubles_then_bisects_to_the_largest_fit():
    assert _sequence(limit=100, start=2, max_batch=1024) == [2, 4, 8, 16, 32, 64, 128, 96, 112, 104, 100, 102, 101]


def test_stops_at_the_cap_when_everything_fits():
    assert _sequence(limit=10**6, start=3, max_batch=20) == [3, 6, 12, 20]


def test_halves_when_the_start_does_not_fit():
    assert _sequence(limit=5, start=64, max_batch=1024) == [64, 32, 16, 8, 4, 6, 5]
    assert _sequence(limit=0, start=4, max_batch=1024) == [4, 2, 1]


@pytest.mark.parametrize("limit,start", [(37, 1), (1, 8), (500, 7), (64, 64)])
def test_the_search_always_ends_at_the_largest_fit(limit, start):
    seq = _sequence(limit=limit, start=start, max_batch=1024)
    assert max(b for b in seq if b <= limit) == limit
    assert len(seq) <= 2 * 11  # bounded: doublings plus a bisection, each at most log2(1024) + 1


def test_a_search_records_every_probe_and_reports_the_largest_fit(tmp_path):
    import psutil

    # A budget a little above this process's own footprint: small batches fit, large ones do not.
    budget = (psutil.Process().memory_info().rss + 200 * 2**20) / 2**30
    rec = run_job(compose_cfg([*FAST, "train.profile=false", "data=random", "model.vocab_size=4096",
                               "search.batch=true", f"train.memory_budget_gb={budget:.3f}", "train.batch_size=64",
                               "search.max_probes=4", "search.max_batch=100000"]), tmp_path)
    s = rec.search
    assert len(s.probes) == 4 and [p.batch_size for p in s.probes][:2] == [64, 128]
    assert {p.status for p in s.probes} <= {"ok", "oom"}
    fitted = [p.batch_size for p in s.probes if p.fits]
    assert all(p.status == "ok" and p.peak_bytes <= budget * 2**30 for p in s.probes if p.fits)
    if fitted:
        assert rec.status == "ok" and s.best_batch == max(fitted) and rec.config["train"]["batch_size"] == s.best_batch
        assert rec.work.tokens_per_step == s.best_batch * 16
    else:
        assert rec.status == "oom" and "no batch size fitted" in rec.outcome.reason
    for p in s.probes:  # every probe, oom ones included, is a record of its own
        assert (tmp_path / p.path / "metrics.json").exists()
    # The report reads the searching job, not its probes.
    df = load_records([tmp_path])
    assert len(df) == 1 and (df.iloc[0].best_batch == s.best_batch or s.best_batch is None)
    from bench.report import build_report

    md = build_report([tmp_path], tmp_path / "report", html=False).read_text()
    section = md.split("## Throughput at equal memory")[1]
    assert ", ".join(f"{p.batch_size} {'fits' if p.fits else p.status}" for p in s.probes) in section
    assert (tmp_path / "report" / "memory_budget.png").exists() == bool(fitted)


def test_a_search_needs_a_budget(cfg_of):
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="search.batch: the search needs a budget"):
        cfg_of("search.batch=true")
