"""The two timelines, against hand-worked closed forms."""
import pytest

from bench.project.devices import Device
from bench.project.fake import Op
from bench.project.timeline import project_time

DEV = Device("test", 2**30, {"bf16": 1e12, "fp16": 1e12, "fp32": 1e11}, 1e9, "test", launch_s=1e-6)


def test_a_host_bound_step_is_the_host_issuing_everything():
    # 100 tiny kernels: 1 us of dispatch + 1 us of launch each, 1e3 bytes = 1 us on the device each
    ops = [Op("aten::add", 0, 1000, True, "fp32")] * 100
    t = project_time(ops, DEV, host_op_s=1e-6)
    assert t.host_s == pytest.approx(200e-6) and t.busy_s == pytest.approx(100e-6)
    # the last kernel starts when the host has issued it (200 us) and runs 1 us
    assert t.step_s == pytest.approx(201e-6) and t.bound == "host"
    assert t.idle_fraction == pytest.approx(1 - 100 / 201)


def test_a_device_bound_step_queues_its_kernels():
    ops = [Op("aten::mm", int(2e9), 0, True, "bf16")] * 10  # 2 ms each at 1e12 FLOP/s
    t = project_time(ops, DEV, host_op_s=1e-6)
    assert t.step_s == pytest.approx(2e-6 + 10 * 2e-3) and t.bound == "device"
    assert t.compute_s == pytest.approx(20e-3) and t.memory_s == 0 and t.kernels == 10


def test_views_cost_the_host_only_and_a_cpu_adds_everything_serially():
    ops = [Op("aten::view", 0, 0, False, "fp32"), Op("aten::mm", int(1e8), 0, True, "fp32")]
    t = project_time(ops, DEV, host_op_s=1e-6)
    assert t.kernels == 1 and t.host_s == pytest.approx(3e-6)
    s = project_time(ops, DEV, host_op_s=1e-6, serial=True)
    assert s.step_s == pytest.approx(3e-6 + 1e8 / 1e11)  # fp32 is priced at the fp32 peak


# --- data-parallel ranks: the communication stream --------------------------------------------------

def _fabric(busbw=1e9, latency=0.0, ranks=2):
    from bench.project.links import Fabric, Link

    return Fabric(ranks, 1, Link("test", busbw, latency, "test"), None)


def test_an_all_gather_issued_ahead_overlaps_the_compute_before_its_reader():
    # the host issues a gather (1 ms on the link) then two 2 ms kernels, the second reading the gather
    ops = [Op("allgather", 0, int(1e6), False, "bf16", collective="allgather"),
           Op("aten::mm", int(2e9), 0, True, "bf16"), Op("aten::mm", int(2e9), 0, True, "bf16", waits=0)]
    t = project_time(ops, DEV, host_op_s=0.0, fabric=_fabric(busbw=2e9))  # 2 ranks: 1e6 x 1/2 / 2e9 = 0.25 ms
    assert t.comm_s == pytest.approx(0.25e-3) and t.comm_wait_s == 0.0  # hidden behind the first kernel
    assert t.step_s == pytest.approx(t.busy_s + t.host_wait_s)


def test_a_gather_read_at_once_is_exposed_and_the_step_splits_into_its_three_parts():
    ops = [Op("allgather", 0, int(8e6), False, "bf16", collective="allgather"),
           Op("aten::mm", int(1e9), 0, True, "bf16", waits=0),
           Op("reducescatter", 0, int(8e6), False, "bf16", collective="reducescatter"),
           Op("wait", 0, 0, False, "fp32", barrier=True), Op("aten::add", 0, 1000, True, "fp32")]
    t = project_time(ops, DEV, host_op_s=1e-6, fabric=_fabric(busbw=1e9))  # each collective: 4 ms
    # host: gather issued at 2 us, its 4 ms run, the mm waits for it; the scatter starts at its issue
    # (after the gather) and the barrier waits for its end
    assert t.comm_s == pytest.approx(8e-3)
    assert t.step_s == pytest.approx(t.busy_s + t.host_wait_s + t.comm_wait_s)
    assert t.comm_wait_s == pytest.approx(4e-3 - 4e-6 + (4e-3 - 1e-3), rel=1e-3) and t.bound == "communication"
    assert t.comm_by_kind == {"allgather": pytest.approx(4e-3), "reducescatter": pytest.approx(4e-3)}


def test_autograd_nodes_cost_the_host_per_node():
    # 10 backward kernels sharing 30 nodes: 3 each at 2 us, on top of 1 us dispatch + 1 us launch
    ops = [Op("aten::mul", 0, 1000, True, "fp32", nodes=3.0)] * 10
    t = project_time(ops, DEV, host_op_s=1e-6, host_node_s=2e-6)
    assert t.host_s == pytest.approx(10 * (1e-6 + 1e-6 + 6e-6))
    assert project_time(ops, DEV, host_op_s=1e-6).host_s == pytest.approx(20e-6)  # no node cost: none added
