"""The device table: every device with its source, PyTorch's figures read back dense."""
import pytest

from bench.config import ConfigError
from bench.project.devices import host_device, listing, lookup, table


def test_every_device_the_issue_names_is_there_with_a_source():
    devices = table()
    for name in ("H100", "A100-80GB", "H200", "L40S", "RTX4090", "RTX3090", "A10G", "H100-HBM2e-96GB"):
        d = devices[name]
        assert d.source and d.memory_bytes > 0 and d.bandwidth > 0 and d.launch_s > 0
        assert d.matmul_flops["bf16"] > d.matmul_flops["fp32"] > 0
    # PyTorch's table gives the H100's bf16 with sparsity (1979 TFLOP/s): dense is half
    assert devices["H100"].matmul_flops["bf16"] == pytest.approx(989.5e12)
    assert "device_info" in devices["H100"].source and devices["A100-80GB"].memory_bytes == 80 * 2**30
    # torchtitan's H100 (Grand Teton): 2.4 TB/s of HBM2e, not the SXM part's 3.35
    assert devices["H100-HBM2e-96GB"].bandwidth == 2.4e12 < devices["H100"].bandwidth


def test_an_unknown_device_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as e:
        lookup("TPUv9")
    assert e.value.key == "project.gpu" and "H100" in str(e.value) and "\n" not in str(e.value)


def test_the_listing_and_the_host_as_a_device():
    assert "RTX3090: 24 GiB" in listing()
    cpu = host_device(1e11, 3e10, "this CPU")
    assert cpu.launch_s == 0 and cpu.matmul_flops["fp32"] == 1e11


def test_the_fitted_achieved_fractions_price_every_gpu_and_say_where_they_come_from(tmp_path, monkeypatch):
    import json

    from bench.project import devices
    from bench.project.fake import Op
    from bench.project.timeline import kernel_s

    monkeypatch.setattr(devices, "ACHIEVED", tmp_path / "none.json")
    peak = devices.lookup("L40S")
    assert (peak.matmul_efficiency, peak.bandwidth_efficiency) == (1.0, 1.0)  # no fit: the datasheet's peaks
    fit = tmp_path / "achieved.json"
    fit.write_text(json.dumps({"matmul": 0.5, "bandwidth": 0.8, "source": "a test's fit"}))
    monkeypatch.setattr(devices, "ACHIEVED", fit)
    d = devices.lookup("L40S")
    assert "achieved 0.50 of its matmul peak and 0.80 of its bandwidth (a test's fit)" in d.source
    op = Op("aten.mm", int(1e12), int(1e9), True, "bf16")
    c, m = kernel_s(op, d)
    assert c == pytest.approx(1e12 / (0.5 * d.matmul_flops["bf16"])) and m == pytest.approx(1e9 / (0.8 * d.bandwidth))
    # a GPU with calibration rows of its own keeps its own matmul fraction; the bandwidth's is shared
    fit.write_text(json.dumps({"matmul": 0.5, "bandwidth": 0.8, "source": "a test's fit",
                               "per_gpu": {"A100-80GB": {"matmul": 0.6, "source": "its own rows"}}}))
    a100, l40s = devices.lookup("A100-80GB"), devices.lookup("L40S")
    assert (a100.matmul_efficiency, a100.bandwidth_efficiency, l40s.matmul_efficiency) == (0.6, 0.8, 0.5)
    assert "achieved 0.60 of its matmul peak and 0.80 of its bandwidth (its own rows)" in a100.source
