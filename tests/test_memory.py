import torch

from bench.memory import HostPeak, device_peaks, nvml_used_bytes


def test_host_peak_sees_a_fresh_allocation():
    host = HostPeak()
    host.reset()
    before = host.peak()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert host.peak() >= before
    if host.since_reset:  # Linux: the high-water mark restarts at reset
        assert host.peak() - before > 48 * 2**20
    del block


def test_device_figures_are_null_without_cuda():
    cpu = torch.device("cpu")
    assert device_peaks(cpu) == {"device_peak_allocated_bytes": None, "device_peak_reserved_bytes": None}
    assert nvml_used_bytes(cpu) is None
