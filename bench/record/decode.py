"""Reading parsed JSON into the record's typed sections (bench/record/schema.py): every field checked
against its type hint, RecordError (one line naming the field) where one does not hold.

Plain Python, as the schema: the analysis side imports it, and must not reach torch.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


class RecordError(ValueError):
    """A metrics.json that is not a record this code can read; str(e) is one line."""


def decode(tp: Any, value: Any, where: str) -> Any:
    """`value` checked against the type hint `tp`; RecordError names the field at fault."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecordError(f"{where.rstrip('.') or 'record'}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise RecordError(f"{where}{unknown[0]}: unknown field")
        out = {}
        for name, f in fields.items():
            if name in value:
                out[name] = decode(hints[name], value[name], f"{where}{name}.")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where}{name}: missing")
        return tp(**out)
    key = where.rstrip(".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return decode(inner, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{key}: expected a list")
        (item,) = typing.get_args(tp)
        return [decode(item, v, f"{key}[{i}].") for i, v in enumerate(value)]
    if tp is Any:
        return value
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          dict: lambda v: isinstance(v, dict)}[tp]
    if not ok(value):
        raise RecordError(f"{key}: expected {tp.__name__}, got {value!r:.40}")
    return float(value) if tp is float else value
