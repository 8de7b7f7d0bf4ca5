"""The job record on disk: metrics.json (written atomically) and steps.jsonl (one line a step)."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA = 1
METRICS = "metrics.json"
STEPS = "steps.jsonl"


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
    """Appends one JSON line per step and flushes it, so a killed job leaves a readable prefix."""

    def __init__(self, path: Path):
        self._f = open(path, "w", buffering=1)

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(_clean(row)) + "\n")

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path: Path) -> dict:
    """Read one metrics.json; raises ValueError naming the file if it is not a schema-1 record."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON record ({e})") from None
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a schema-{SCHEMA} record")
    return rec


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
