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
