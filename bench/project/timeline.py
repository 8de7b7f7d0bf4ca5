"""A projected step's time: the host issues every operation in turn, the device runs each kernel.

    host   op 1 ─┬─ op 2 ─┬─ op 3 ─┬─ ...        each: the dispatcher's cost per operation (this
                 │        │        │                   machine's calibration) + a launch if it is a kernel
                 │        │        │                   (+ in backward, its share of autograd's nodes)
    device       └─ k1 ───┴──┐ k2 ─┴─ k3 ...      a kernel starts when the host has issued it and the
                             └─ idle              device has finished the one before
    kernel time = max(FLOPs / achieved FLOP/s of its dtype, bytes read and written / achieved bandwidth)

    comm         ── all-gather ──  ── all-gather ── reduce-scatter ...   data-parallel ranks: each
                                                                           collective starts when the host
                                                                           has issued it and the one before
                                                                           has ended (bench/project/links.py)

A kernel that reads an all-gather's output (FSDP's copy-out of the gathered parameters) waits for
it; backward's end waits for every collective (DDP's last buckets, FSDP's reduce-scatters). So the
next block's all-gather, issued by a host that runs ahead, overlaps this block's compute, as
FSDP's prefetching intends; a host-bound step cannot hide it.

The step is the device's timeline, and it splits exactly into three: kernels running (compute),
waiting for the host to issue the next (host), and waiting for a collective (exposed communication).
The bound is the largest of the three. A device that waits on the host idles: that share of the
step is what "host-bound" means, the mechanism behind MiniMind #88's slower LoRA on a GPU. On a
CPU (the self-projection) the host runs each operation itself: the timelines are one, and every
operation's time adds to its dispatch.
"""
from __future__ import annotations

from dataclasses import dataclass

from collections import Counter

from bench.project.devices import Device
from bench.project.fake import Op
from bench.project.links import Fabric


@dataclass
class Timeline:
    step_s: float
    host_s: float       # when the host has issued the last operation
    busy_s: float       # kernel time on the device
    compute_s: float    # of it, kernels bound by arithmetic
    memory_s: float     # of it, kernels bound by memory traffic
    kernels: int
    host_wait_s: float = 0.0   # the device idle, waiting for the host to issue a kernel
    comm_wait_s: float = 0.0   # the device idle, waiting for a collective: exposed communication
    comm_s: float = 0.0        # the communication stream busy
    comm_by_kind: dict | None = None  # kind -> seconds on the link

    @property
    def idle_fraction(self) -> float:
        return 1.0 - self.busy_s / self.step_s if self.step_s > 0 else 0.0

    @property
    def bound(self) -> str:
        """The largest of the step's three parts."""
        parts = {"device": self.busy_s, "host": self.host_wait_s, "communication": self.comm_wait_s}
        return max(parts, key=parts.get)


def kernel_s(op: Op, device: Device) -> tuple[float, float]:
    """(compute-bound time, memory-bound time) of one kernel."""
    return (op.flops / (device.matmul_flops[op.dtype] * device.matmul_efficiency),
            op.bytes / (device.bandwidth * device.bandwidth_efficiency))


def issue_s(op: Op, device: Device, host_op_s: float, host_node_s: float = 0.0) -> float:
    """The host's time to issue one operation: dispatch, its share of autograd's nodes, a launch if it runs."""
    return host_op_s + op.nodes * host_node_s + (device.launch_s if op.kernel or op.collective else 0.0)


def project_time(ops: list[Op], device: Device, host_op_s: float, serial: bool = False,
                 fabric: Fabric | None = None, host_node_s: float = 0.0) -> Timeline:
    """`serial`: the host executes the kernels itself (a CPU). `fabric`: the link collectives are priced on.
    `host_node_s`: the host's cost per autograd node (each op's `nodes`, backward's graph spread over it)."""
    host = dev = busy = compute = memory = host_wait = comm_wait = 0.0
    comm_free = comm_busy = 0.0
    comm_end: dict[int, float] = {}
    by_kind: Counter = Counter()
    kernels = 0
    for i, op in enumerate(ops):
        if op.barrier:  # the compute stream waits for every collective issued so far
            start = max(host, dev)
            host_wait += start - dev
            if comm_free > start:
                comm_wait += comm_free - start
                start = comm_free
            dev = start
            continue
        host += issue_s(op, device, host_op_s, host_node_s)
        if op.collective:
            took = fabric.seconds(op.collective, op.bytes) if fabric is not None else 0.0
            comm_free = max(host, comm_free) + took
            comm_end[i] = comm_free
            comm_busy += took
            by_kind[op.collective] += took
            continue
        if not op.kernel:
            continue
        kernels += 1
        c, m = kernel_s(op, device)
        d = max(c, m)
        busy += d
        if c >= m:
            compute += d
        else:
            memory += d
        if serial:
            host += d
            dev = host
            continue
        start = max(host, dev)
        host_wait += start - dev
        if op.waits is not None and comm_end.get(op.waits, 0.0) > start:
            comm_wait += comm_end[op.waits] - start
            start = comm_end[op.waits]
        dev = start + d
    step = max(host, dev, comm_free)
    if serial:
        host_wait = step - busy
    else:  # whatever ends after the device's last kernel: the host's last operations, a last collective
        comm_wait += max(0.0, comm_free - max(host, dev))
        host_wait += max(0.0, host - dev)
    return Timeline(step_s=step, host_s=host, busy_s=busy, compute_s=compute, memory_s=memory, kernels=kernels,
                    host_wait_s=host_wait, comm_wait_s=comm_wait, comm_s=comm_busy, comm_by_kind=dict(by_kind))
