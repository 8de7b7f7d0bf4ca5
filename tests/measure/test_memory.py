import pytest
import torch

from bench.measure.memory import HostPeak, device_peaks, nvml_used_bytes, reset_peaks

MIB = 2**20


def test_host_peak_holds_a_freed_allocation_until_reset():
    host = HostPeak()
    host.reset()
    if not host.since_reset:
        pytest.skip("this kernel does not let the process reset its high-water mark")
    block = torch.ones(96 * MIB // 4)  # 96 MiB, touched
    held = host.current()
    del block
    # Freed, but the peak remembers it (two readings of the kernel a few pages apart).
    assert host.peak() > held - MIB and held > host.current() + 64 * MIB
    host.reset()
    assert host.peak() < host.current() + 32 * MIB  # a reset starts from what is resident now


def test_device_figures_are_null_without_cuda():
    cpu = torch.device("cpu")
    reset_peaks(cpu)  # no CUDA call on a CPU device
    assert device_peaks(cpu) == {"device_peak_allocated_bytes": None, "device_peak_reserved_bytes": None}
    assert nvml_used_bytes(cpu) is None
