"""Schema 1: every committed schema-1 record upgrades, with the same figures and the plan facts."""
import json

from bench.record.schema import SCHEMA, Record
from tests.conftest import ROOT

REFERENCE = ROOT / "results" / "reference"


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
