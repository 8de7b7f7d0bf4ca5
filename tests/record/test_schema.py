"""The typed record: round trips, checks every field, and reads every committed schema-1 record."""
import json

import pytest

from bench.record.schema import SCHEMA, Record, RecordError
from tests.conftest import ROOT
from tests.fixtures import record

REFERENCE = ROOT / "results" / "reference"


def test_a_record_round_trips_through_json():
    rec = Record.from_json(record(strategy="lora_all", rank=8))
    assert rec.identity.rank == 8 and rec.time.step_ms.median == 20.0 and rec.plan.uses_lora
    again = Record.from_json(json.loads(json.dumps(rec.to_json())))
    assert again == rec and rec.to_json()["schema"] == SCHEMA


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("identity"), "identity: missing"),
    (lambda r: r["time"].update(timed_steps="20"), "time.timed_steps: expected int"),
    (lambda r: r["params"].update(trainable=True), "params.trainable: expected int"),
    (lambda r: r["memory"].update(weight_bytes=1), "memory.weight_bytes: unknown field"),
    (lambda r: r.update(status="great"), "status: 'great' is not one of"),
    (lambda r: r.update(schema=3), "schema 3 is not one this version reads"),
    (lambda r: r["plan"].update(adapted="wq"), "plan.adapted: expected a list"),
])
def test_a_wrong_field_is_named_in_one_line(mutate, message):
    rec = record(strategy="lora_qk", rank=8)
    mutate(rec)
    with pytest.raises(RecordError, match=message) as e:
        Record.from_json(rec)
    assert "\n" not in str(e.value)


def _v1_records():
    return sorted(p for p in REFERENCE.rglob("metrics.json") if json.loads(p.read_text())["schema"] == 1)


def test_every_committed_schema_1_record_upgrades():
    paths = _v1_records()
    assert len(paths) > 100  # the references filed before schema 2
    for path in paths:
        old = json.loads(path.read_text())
        rec = Record.from_json(old)
        assert rec.schema == SCHEMA and rec.status == old["status"], path
        assert (rec.identity.strategy, rec.identity.rank) == (old["strategy"], old["rank"])
        if old["status"] == "ok":
            assert rec.time.step_ms.median == old["time"]["step_ms"]["median"]
            assert rec.time.timed_s == old["time"]["train_s"] and rec.work.counted_step == 0
            assert rec.plan.uses_lora == (old["rank"] is not None)


def test_schema_1_facts_become_plan_fields():
    by_strategy = {}
    for path in _v1_records():
        rec = Record.from_json(json.loads(path.read_text()))
        if rec.status == "ok":
            layers = (rec.config.get("lora") or {}).get("layers")
            by_strategy.setdefault((rec.identity.strategy, bool(layers and rec.identity.rank)), set()).add(
                rec.plan.backward_stops_early)
    assert by_strategy[("lora_last", False)] == {True}
    assert by_strategy[("full", False)] == {False} and by_strategy[("lora_all", False)] == {False}
    assert by_strategy[("lora_all", True)] == {True}  # the depth study: the last blocks only
