import json

import pytest

from bench.record.schema import RecordError
from bench.record.store import StepLog, read_record, read_steps, write_json_atomic
from tests.fixtures import record


def test_atomic_write_and_non_finite_numbers(tmp_path):
    p = tmp_path / "m.json"
    write_json_atomic(p, {"schema": 1, "loss": float("nan"), "xs": [1.0, float("inf")]})
    assert json.loads(p.read_text()) == {"schema": 1, "loss": None, "xs": [1.0, None]}
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


def test_read_record_names_the_file_and_what_is_wrong(tmp_path):
    cut = tmp_path / "cut.json"
    cut.write_text('{"schema": 2, "status": "o')
    with pytest.raises(RecordError, match="cut.json: not a readable JSON record"):
        read_record(cut)
    other = tmp_path / "other.json"
    other.write_text('{"schema": 99}')
    with pytest.raises(RecordError, match=r"other.json: schema 99 is not one this version reads"):
        read_record(other)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({**record(), "time": {**record()["time"], "step_ms": "fast"}}))
    with pytest.raises(RecordError, match=r"typo.json: time.step_ms: expected an object") as e:
        read_record(typo)
    assert "\n" not in str(e.value)


def test_step_log_keeps_a_readable_prefix(tmp_path):
    p = tmp_path / "steps.jsonl"
    log = StepLog(p)
    log.write({"step": 0, "loss": 1.0})
    log.write({"step": 1, "loss": 0.5})
    # Not closed: lines must already be on disk (in the .part log), as after a kill.
    assert not p.exists()
    with open(log.part, "a") as f:
        f.write('{"step": 2, "lo')
    assert [r["step"] for r in read_steps(p)] == [0, 1]


def test_a_closed_step_log_is_renamed_whole_and_a_later_phase_appends_to_it(tmp_path):
    p = tmp_path / "steps.jsonl"
    with StepLog(p) as log:
        log.write({"step": 0})
    assert p.exists() and not log.part.exists()
    with StepLog(p, mode="a") as log:
        log.write({"step": 1})
        assert [r["step"] for r in read_steps(p)] == [0]  # the reader sees the whole first log meanwhile
    assert [r["step"] for r in read_steps(p)] == [0, 1] and not log.part.exists()
