"""A projected step's time: the host issues every operation in turn, the device runs each kernel.

    host   op 1 ─┬─ op 2 ─┬─ op 3 ─┬─ ...        each: the dispatcher's cost per operation (this
                 │        │        │                   machine's calibration) + a launch if it is a kernel
    device       └─ k1 ───┴──┐ k2 ─┴─ k3 ...      a kernel starts when the host has issued it and the
                             └─ idle              device has finished the one before
    kernel time = max(FLOPs / achieved FLOP/s of its dtype, bytes read and written / achieved bandwidth)

The step ends where the later of the two timelines ends. A device that waits on the host idles:
that share of the step is what "host-bound" means, the mechanism behind MiniMind #88's slower
LoRA on a GPU. On a CPU (the self-projection) the host runs each operation itself: the two
timelines are one, and every operation's time adds to its dispatch.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.project.devices import Device
from bench.project.fake import Op


@dataclass
class Timeline:
    step_s: float
    host_s: float       # when the host has issued the last operation
    busy_s: float       # kernel time on the device
    compute_s: float    # of it, kernels bound by arithmetic
    memory_s: float     # of it, kernels bound by memory traffic
    kernels: int

    @property
    def idle_fraction(self) -> float:
        return 1.0 - self.busy_s / self.step_s if self.step_s > 0 else 0.0

    @property
    def bound(self) -> str:
        return "host" if self.host_s >= self.busy_s and self.idle_fraction > 0.5 else "device"


def kernel_s(op: Op, device: Device) -> tuple[float, float]:
    """(compute-bound time, memory-bound time) of one kernel."""
    return (op.flops / (device.matmul_flops[op.dtype] * device.matmul_efficiency),
            op.bytes / (device.bandwidth * device.bandwidth_efficiency))


def project_time(ops: list[Op], device: Device, host_op_s: float, serial: bool = False) -> Timeline:
    """`serial`: the host executes the kernels itself (a CPU)."""
    host = dev = busy = compute = memory = 0.0
    kernels = 0
    for op in ops:
        host += host_op_s + (device.launch_s if op.kernel else 0.0)
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
        else:
            dev = max(host, dev) + d
    return Timeline(step_s=max(host, dev), host_s=host, busy_s=busy, compute_s=compute, memory_s=memory,
                    kernels=kernels)
