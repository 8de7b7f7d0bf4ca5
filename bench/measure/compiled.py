"""What train.compile did, read from TorchDynamo's own counters around the job's steps.

- graphs: graphs Dynamo compiled (forward; AOTAutograd compiles each one's backward with it);
  more than one means a graph break or a recompilation;
- graph_breaks and their reasons, as Dynamo reports them;
- recompiles_on_clock: graphs compiled after the untimed steps. It should be 0: warm-up exists
  to cover recompilations, and a compilation on the clock is reported, never hidden;
- cache_hits: graphs Inductor took from its on-disk cache (a second run of the same model
  compiles faster: both are real, and the record says which it was);
- compiler_s: Dynamo's own total of its compile time. `time.compile_s` is the measured one: the
  wall time of the steps that compiled, less as many steady steps (bench/measure/protocol.py).
"""
from __future__ import annotations

from collections import Counter

from bench.record.schema import Compile


def _counters():
    from torch._dynamo.utils import counters

    return counters


def snapshot() -> tuple[int, Counter, int]:
    c = _counters()
    return int(c["stats"]["unique_graphs"]), Counter(c["graph_break"]), int(c["inductor"]["fxgraph_cache_hit"])


def compiler_seconds() -> float | None:
    try:
        from torch._dynamo.utils import calculate_time_spent
    except ImportError:  # private API: its absence costs only this one figure
        return None
    spent = calculate_time_spent()
    return spent.get("entire_frame_compile")


def _delta(now: float | None, start: float | None) -> float | None:
    return None if now is None else now - (start or 0.0)


class CompileWatch:
    """Dynamo's counters at the job's start and at the clock's start, compared at the end."""

    def __init__(self):
        self.start = snapshot()
        self.clock = None
        self.compiler_start = compiler_seconds()

    def clock_starts(self) -> None:
        self.clock = snapshot()

    def section(self) -> Compile:
        graphs, breaks, hits = snapshot()
        new_breaks = breaks - self.start[1]
        on_clock = None if self.clock is None else graphs - self.clock[0]
        return Compile(mode="torch.compile", what="the model's forward and backward (AdamW eager)",
                       graphs=graphs - self.start[0], graph_breaks=sum(new_breaks.values()),
                       break_reasons=[f"{n} x {reason}" for reason, n in new_breaks.most_common(5)],
                       recompiles_on_clock=on_clock, compiler_s=_delta(compiler_seconds(), self.compiler_start),
                       cache_hits=hits - self.start[2])


def judge_clock(stability, section: Compile) -> None:
    """A compilation on the clock is time the steps did not spend training: the job takes no part
    in a verdict, and the report's warning says how to measure it again."""
    n = section.recompiles_on_clock
    if stability is None or not n:
        return
    why = f"torch.compile compiled {n} graph(s) after the untimed steps (raise train.warmup_steps)"
    stability.unstable = True
    stability.reason = why if not stability.reason else f"{stability.reason}; {why}"
