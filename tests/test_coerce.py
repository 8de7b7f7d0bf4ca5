"""Building the validated configuration's dataclasses: presence, type, and the key named."""
from dataclasses import dataclass
from typing import Optional

import pytest

from bench.coerce import ConfigError, build


@dataclass(frozen=True)
class Inner:
    n: int
    ratio: float
    names: Optional[list[str]]


@dataclass(frozen=True)
class Outer:
    flag: bool
    inner: Inner


def test_a_mapping_builds_with_ints_for_floats():
    out = build(Outer, {"flag": True, "inner": {"n": 2, "ratio": 1, "names": ["a"]}}, "")
    assert out == Outer(True, Inner(2, 1.0, ["a"])) and isinstance(out.inner.ratio, float)


@pytest.mark.parametrize("node, key", [({"flag": 1, "inner": {"n": 1, "ratio": 1.0, "names": None}}, "flag"),
                                       ({"flag": True, "inner": {"n": 1, "ratio": 1.0}}, "inner.names"),
                                       ({"flag": True, "inner": {"n": 1.5, "ratio": 1.0, "names": None}}, "inner.n"),
                                       ({"flag": True, "inner": {"n": 1, "ratio": 1.0, "names": [3]}}, "inner.names[0]"),
                                       ({"flag": True, "x": 1, "inner": {}}, "x")])
def test_a_wrong_key_is_named_in_one_line(node, key):
    with pytest.raises(ConfigError) as e:
        build(Outer, node, "")
    assert e.value.key == key and "\n" not in str(e.value)
