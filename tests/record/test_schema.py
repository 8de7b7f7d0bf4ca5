"""The typed record: round trips, and checks every field (schema 1: tests/record/test_schema1.py)."""
import json

import pytest

from bench.record.schema import SCHEMA, Record, RecordError
from tests.fixtures import record



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
