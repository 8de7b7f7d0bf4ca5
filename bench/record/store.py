"""The job record on disk: metrics.json (written atomically) and steps.jsonl (one line a step)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.record.schema import Record, RecordError

METRICS = "metrics.json"
STEPS = "steps.jsonl"
RANKS = "ranks"  # a multi-process job's ranks' own records, under its job directory (bench/distributed/launch.py)
PROBES = "probes"  # the memory-budget search's probe jobs, under its own job directory (bench/search.py)


def _clean(x: Any) -> Any:
    # JSON has no NaN/inf: a diverged loss is written as null, not as invalid JSON.
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temporary file in the same directory, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_clean(obj), f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StepLog:
    """Appends one JSON line per step and flushes it, so a killed job leaves a readable prefix.
    mode "a": a later phase of the same job (the paired baseline) adds its rows."""

    def __init__(self, path: Path, mode: str = "w"):
        self._f = open(path, mode, buffering=1)

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(_clean(row)) + "\n")

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_record(path: Path, rec: Record) -> None:
    write_json_atomic(path, rec.to_json())


def read_record(path: Path) -> Record:
    """Read one metrics.json as a typed Record; RecordError names the file and the field at fault."""
    path = Path(path)
    try:
        node = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not a readable JSON record ({e})") from None
    try:
        return Record.from_json(node)
    except RecordError as e:
        raise RecordError(f"{path}: {e}") from None


def read_steps(path: Path) -> list[dict]:
    """Read steps.jsonl, keeping every complete line (a killed job may leave a partial last one).
    A missing file reads as no steps."""
    rows = []
    try:
        text = Path(path).read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
