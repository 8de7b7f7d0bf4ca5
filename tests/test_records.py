import json

import pytest

from bench.records import StepLog, read_metrics, read_steps, write_json_atomic


def test_atomic_write_and_non_finite_numbers(tmp_path):
    p = tmp_path / "m.json"
    write_json_atomic(p, {"schema": 1, "loss": float("nan"), "xs": [1.0, float("inf")]})
    assert json.loads(p.read_text()) == {"schema": 1, "loss": None, "xs": [1.0, None]}
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


def test_read_metrics_rejects_other_schemas_and_garbage(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 1, "status": "o')
    with pytest.raises(ValueError, match="bad.json"):
        read_metrics(bad)
    other = tmp_path / "other.json"
    other.write_text('{"schema": 99}')
    with pytest.raises(ValueError, match="schema"):
        read_metrics(other)


def test_step_log_keeps_a_readable_prefix(tmp_path):
    p = tmp_path / "steps.jsonl"
    log = StepLog(p)
    log.write({"step": 0, "loss": 1.0})
    log.write({"step": 1, "loss": 0.5})
    # Not closed: lines must already be on disk, as after a kill.
    with open(p, "a") as f:
        f.write('{"step": 2, "lo')
    assert [r["step"] for r in read_steps(p)] == [0, 1]
    log.close()
