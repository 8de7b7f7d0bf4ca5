"""Property-based: garbage for every public key gives one line naming the key, never a traceback.

The keys come from the validated config's own dataclasses, so a key added there is fuzzed too.
In process (many examples): the command line's checks, then the job, which must refuse the
value as `invalid` naming the key. Through the real command line (a few examples): a non-zero
exit, one line on stderr, and an existing sweep's record left untouched.
"""
import dataclasses
import subprocess
import sys
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import preflight
from bench.config import BenchConfig
from bench.job import run_job
from tests.conftest import FAST, ROOT, compose_cfg


def _leaves(cls, prefix=""):
    """(dotted key, base type) of every leaf of the config."""
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, f"{prefix}{f.name}.")
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        yield f"{prefix}{f.name}", (args[0] if args and typing.get_origin(tp) is not list else tp)


KEYS = dict(_leaves(BenchConfig))
# Free-form strings (names, paths): any text is a valid value there, so they get only non-strings.
FREE_TEXT = {"model.name", "model.path", "model.checkpoint", "data.path", "pretrain.dir", "strategy.name"}
WORDS = st.text(alphabet="abcxyz_", min_size=1, max_size=8).filter(
    lambda w: w.lower() not in ("true", "false", "null", "none", "yes", "no", "on", "off", "nan", "inf"))


def _garbage(key: str):
    """Values of the wrong type for `key`, written as Hydra override text."""
    tp = KEYS[key]
    lists = st.lists(st.integers(-3, 3), min_size=1, max_size=3).map(lambda xs: "[" + ",".join(map(str, xs)) + "]")
    if tp in (int, float):
        return st.one_of(WORDS, lists, st.just("true"))
    if tp is bool:
        return st.one_of(WORDS, st.integers(2, 99).map(str), lists)
    if typing.get_origin(tp) is list:
        return st.one_of(st.just("true"), st.just("{a: 1}"))
    return st.one_of(lists, st.just("{a: 1}")) if key in FREE_TEXT else st.one_of(lists, st.just("{a: 1}"))


def _argv(key: str, value: str) -> list[str]:
    return [f"{key}={value}", *(o for o in FAST if o.split("=")[0] != key)]


def _refusal(key: str, value: str, tmp_path) -> str:
    """What the command line would say: preflight's one line, or the job's invalid reason."""
    argv = _argv(key, value)
    try:
        preflight(argv)
    except SystemExit as e:
        assert e.code == 2
        return "preflight"
    rec = run_job(compose_cfg(argv), tmp_path / "job")
    assert rec.status == "invalid", (key, value, rec.status, rec.outcome)
    assert "\n" not in rec.outcome.reason and rec.outcome.key.split("[")[0].startswith(key.split(".")[0])
    return rec.outcome.key


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_garbage_for_any_key_is_refused_in_one_line(data, tmp_path, capsys):
    key = data.draw(st.sampled_from(sorted(KEYS)), label="key")
    value = data.draw(_garbage(key), label="value")
    where = _refusal(key, value, tmp_path)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    if where == "preflight":
        assert len(err) == 1 and "Traceback" not in err[0]
    else:
        assert where.split("[")[0] == key or key.startswith(where + ".") or where.startswith(key), (key, where)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A sweep directory that already holds one measured job."""
    sweep = tmp_path_factory.mktemp("sweep")
    res = subprocess.run([sys.executable, "-m", "bench.run", "-m", "strategy=lora_qk", *FAST,
                          f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return sweep, (sweep / "0" / "metrics.json").read_bytes()


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_command_line_refuses_garbage_and_keeps_what_was_measured(data, measured):
    sweep, before = measured
    key = data.draw(st.sampled_from(sorted(KEYS)), label="key")
    value = data.draw(_garbage(key), label="value")
    res = subprocess.run([sys.executable, "-m", "bench.run", *_argv(key, value),
                          f"hydra.run.dir={sweep / 'single'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, (key, value, res.stderr[-1500:])
    assert len(err) == 1 and "Traceback" not in res.stderr, (key, value, res.stderr[-1500:])
    assert key.split(".")[-1] in err[0] or key.split(".")[0] in err[0], (key, value, err[0])
    assert (sweep / "0" / "metrics.json").read_bytes() == before
