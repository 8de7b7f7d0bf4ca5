"""The links and NCCL's ring model (bench/project/links.py), against closed forms."""
import pytest

from tests.project.test_timeline import _fabric


def test_a_collective_costs_latency_plus_the_ring_factor_over_bus_bandwidth():
    from bench.project.links import LINKS, fabric

    f = _fabric(busbw=1e9, latency=10e-6, ranks=8)
    assert f.seconds("allreduce", 8e6) == pytest.approx(10e-6 + 2 * 7 / 8 * 8e6 / 1e9)
    assert f.seconds("allgather", 8e6) == pytest.approx(10e-6 + 7 / 8 * 8e6 / 1e9)
    assert f.seconds("reducescatter", 8e6) == f.seconds("allgather", 8e6)
    assert _fabric(ranks=1).seconds("allreduce", 1e9) == 0.0
    # across nodes the ring runs at the slower of the node's link and the network
    two = fabric("H100", 16, 2, None, "IB-NDR")
    assert two.bus_bandwidth == min(LINKS["NVLink4"].bus_bandwidth, LINKS["IB-NDR"].bus_bandwidth)
    assert fabric("RTX4090", 2, 1, None, "IB-NDR").link.name == "PCIe4"
    assert fabric("RTX4090", 2, 1, "NVLink3", "IB-NDR").link.name == "NVLink3"


def test_every_device_has_a_known_default_link_and_every_link_a_source():
    from bench.project.devices import table
    from bench.project.links import DEFAULT, LINKS

    assert set(table()) <= set(DEFAULT) and set(DEFAULT.values()) <= set(LINKS)
    assert all(link.source and link.bus_bandwidth > 0 for link in LINKS.values())
