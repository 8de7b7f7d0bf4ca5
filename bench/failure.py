"""What a job (or one rank of a multi-process job) records for the exception that ended it.

One mapping, imported by both stages that end jobs: bench/job.py and bench/distributed/worker.py.
"""
from __future__ import annotations

import traceback

import torch

from bench.config import ConfigError
from bench.measure.protocol import Diverged, OutOfMemory
from bench.record.schema import Outcome


def failure(e: BaseException) -> tuple[str, Outcome]:
    """The status and outcome a job (or one rank of it) records for the exception that ended it."""
    if isinstance(e, ConfigError):
        return "invalid", Outcome(reason=str(e), key=e.key)
    if isinstance(e, Diverged):
        return "diverged", Outcome(reason=str(e), failed_step=e.step, last_finite_loss=e.last_finite)
    if isinstance(e, OutOfMemory):
        return "oom", Outcome(reason=str(e), failed_step=e.step, oom_where=e.where)
    if isinstance(e, torch.cuda.OutOfMemoryError):  # before the first step: moving the model, the first eval
        return "oom", Outcome(reason=f"out of cuda memory before training: {str(e).splitlines()[0]}", oom_where="cuda")
    if isinstance(e, KeyboardInterrupt):
        return "interrupted", Outcome(reason="interrupted by the user or a signal")
    return "error", Outcome(reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exception(e)[-6:])
