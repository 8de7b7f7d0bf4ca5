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
PART = ".part"  # a step log being written (StepLog), or left by a killed job
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


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")


class StepLog:
    """One JSON line per step, flushed, into `steps.jsonl.part` while the job runs (a killed job
    leaves a readable prefix there); closed, the file is renamed to steps.jsonl, so a reader of
    steps.jsonl sees a whole log, never one being written. mode "a": a later phase of the same job
    (the paired baseline) adds its rows to the log already there."""

    def __init__(self, path: Path, mode: str = "w"):
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + PART)
        if mode == "a" and self.path.exists():
            self.part.write_bytes(self.path.read_bytes())
        self._f = open(self.part, "a" if mode == "a" else "w", buffering=1)

    def write(self, row: dict) -> None:
        self._f.write(json.dumps(_clean(row)) + "\n")

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.part, self.path)

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
    """Read steps.jsonl (or, where there is none yet, the log being written: steps.jsonl.part),
    keeping every complete line (a killed job may leave a partial last one). No file reads as no
    steps."""
    rows = []
    path = Path(path)
    try:
        text = path.read_text()
    except OSError:
        try:  # a job still running, or killed: its log so far
            text = path.with_name(path.name + PART).read_text()
        except OSError:
            return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
