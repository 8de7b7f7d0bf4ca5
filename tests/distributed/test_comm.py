"""The collective counters, alone; the counts of real two-rank jobs are in test_launch.py."""
import torch

from bench.distributed.comm import CommCounter
from bench.distributed.worker import TimedSteps


def test_counter_adds_payload_bytes_by_kind_and_resets():
    c = CommCounter()
    c.add("allreduce", torch.zeros(10))
    c.add("allreduce", torch.zeros(3, dtype=torch.bfloat16))
    c.add("allgather", torch.zeros(2, 2))
    assert c.bytes == {"allreduce": 46, "allgather": 16} and c.calls == {"allreduce": 2, "allgather": 1}
    c.reset()
    assert not c.bytes and not c.calls


def test_collectives_are_counted_over_the_timed_steps_only():
    c = CommCounter()
    steps = TimedSteps(c, 3)
    for i, kind in enumerate(["first", "count", "profile", "warmup", "timed", "timed", "timed", "eval"]):
        c.add("allreduce", torch.zeros(5 if kind == "timed" else 1000))  # what the step exchanged
        steps(i, kind)
    comm = steps.section()
    assert comm.allreduce_bytes_per_step == 20 and comm.allreduce_calls_per_step == 1.0
    assert comm.allgather_bytes_per_step == 0
