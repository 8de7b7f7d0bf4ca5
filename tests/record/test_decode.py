"""Typed decoding of a record's JSON: each field against its hint, one line naming the one at fault."""
from dataclasses import dataclass, field
from typing import Optional

import pytest

from bench.record.decode import RecordError, decode


@dataclass
class Inner:
    n: int
    x: Optional[float] = None


@dataclass
class Outer:
    name: str
    inner: Inner
    items: list[Inner] = field(default_factory=list)


def test_a_well_typed_node_decodes_and_ints_stand_for_floats():
    out = decode(Outer, {"name": "a", "inner": {"n": 1, "x": 2}, "items": [{"n": 3}]}, "")
    assert out == Outer("a", Inner(1, 2.0), [Inner(3)]) and isinstance(out.inner.x, float)


@pytest.mark.parametrize("node, where", [({"name": "a", "inner": {"n": True}}, "inner.n"),
                                         ({"name": "a", "inner": {}}, "inner.n: missing"),
                                         ({"name": "a", "inner": {"n": 1, "y": 0}}, "inner.y: unknown field"),
                                         ({"name": "a", "inner": {"n": 1}, "items": [{"n": "3"}]}, "items[0].n")])
def test_a_wrong_field_is_named(node, where):
    with pytest.raises(RecordError) as e:
        decode(Outer, node, "")
    assert where in str(e.value) and "\n" not in str(e.value)
