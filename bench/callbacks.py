"""Hydra callback: build the report when a sweep ends.

Hydra hands `on_multirun_end` no job results, so the report reads the records from disk;
a report that fails is one line on stderr, never a failed sweep.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def report_sweep(sweep_dir: Path) -> None:
    from bench.report import build_report

    try:
        print(f"report: {build_report([sweep_dir], sweep_dir / 'report')}", flush=True)
    except Exception as e:  # the records are safe on disk; `python -m bench.report` can retry
        print(f"error: the report of {sweep_dir} failed ({type(e).__name__}: {e}); "
              f"rebuild it with python -m bench.report {sweep_dir}", file=sys.stderr)


class ReportOnMultirunEnd(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        report_sweep(Path(config.hydra.sweep.dir))
