"""The links between GPUs, and what a collective costs on them: NCCL's ring model, as nccl-tests reports it.

    time = latency + factor(n) x payload / bus bandwidth
    factor(n) = 2(n-1)/n  all-reduce                      (nccl-tests' PERFORMANCE.md: bus bandwidth
              = (n-1)/n   all-gather, reduce-scatter       = algorithm bandwidth x factor(n))

The payload is what bench/distributed/comm.py counts: an all-reduce's buffer, an all-gather's
output, a reduce-scatter's input. Bus bandwidth is what nccl-tests prints as busbw for large
messages: the achieved rate of the slowest link the ring crosses, so it is a measured figure, not a
line rate. Across nodes the ring crosses the network once per node, so the step's rate is the lower
of the node's link and the network's per-node rate.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.coerce import ConfigError

GB = 1e9


@dataclass(frozen=True)
class Link:
    name: str
    bus_bandwidth: float  # bytes/s: nccl-tests' busbw at large messages
    latency_s: float      # a collective's fixed cost
    source: str


_SMALL = ("a collective's fixed cost, about the time nccl-tests gives a 32 KB all-reduce on 2 GPUs "
          "(13.4 us, NVIDIA/nccl-tests#44)")

LINKS = {link.name: link for link in (
    Link("NVLink4", 370 * GB, 15e-6,
         "NVLink 4 (H100/H200 SXM): 450 GB/s line rate per direction; NCCL's effective busbw 370 GB/s with its "
         "protocol overhead, per its maintainer (NVIDIA/nccl-tests#212); " + _SMALL),
    Link("NVLink3", 200 * GB, 15e-6,
         "NVLink 3 (A100 SXM): 300 GB/s per direction; all_reduce_perf busbw about 200 GB/s on 8 x A100-SXM4-80GB "
         "(NVIDIA/nccl-tests#149; #178 reports 208); " + _SMALL),
    Link("PCIe4", 24 * GB, 15e-6,
         "PCIe 4.0 x16: 32 GB/s per direction; NCCL's topology rates it 24 GB/s (NVIDIA/nccl-tests#307, "
         "'PCI[24.0]'), and 5 x RTX 4090 with peer-to-peer reach busbw 24.7 GB/s "
         "(tinygrad/open-gpu-kernel-modules#17); stock RTX 4090 drivers disable peer-to-peer, which can only "
         "be slower; " + _SMALL),
    Link("PCIe5", 48 * GB, 15e-6,
         "PCIe 5.0 x16: twice PCIe 4.0's rate per lane, so twice its 24 GB/s (assumed, not measured); " + _SMALL),
    Link("IB-HDR", 170 * GB, 30e-6,
         "InfiniBand HDR, 8 x 200 Gb/s per node (DGX A100): 200 GB/s per node; achieved 0.85 of the line rate, as "
         "3 nodes with 4 x HDR each reached busbw 84.8 of 100 GB/s (NVIDIA/nccl-tests#119); latency assumed "
         "twice a node's"),
    Link("IB-NDR", 340 * GB, 30e-6,
         "InfiniBand NDR, 8 x 400 Gb/s per node (DGX H100): 400 GB/s per node; 0.85 of the line rate achieved, as "
         "for HDR (NVIDIA/nccl-tests#119); latency assumed twice a node's"),
    Link("Ethernet-100G", 10.6 * GB, 30e-6,
         "100 Gb Ethernet, one port per node: 12.5 GB/s; 0.85 of it achieved, as for InfiniBand (assumed)"),
)}

# Each device's link within a node: the SXM parts' NVLink; the others PCIe.
DEFAULT = {"H100": "NVLink4", "H100-HBM2e-96GB": "NVLink4", "H200": "NVLink4", "A100-80GB": "NVLink3",
           "L40S": "PCIe4", "RTX4090": "PCIe4", "RTX3090": "PCIe4", "A10G": "PCIe4"}

FACTOR = {"allreduce": lambda n: 2 * (n - 1) / n, "allgather": lambda n: (n - 1) / n,
          "reducescatter": lambda n: (n - 1) / n}


def lookup(name: str, key: str) -> Link:
    if name not in LINKS:
        raise ConfigError(key, f"{name!r} is not a link the projection knows; one of: {', '.join(LINKS)}")
    return LINKS[name]


def node_link(device: str, override: str | None) -> Link:
    if override is not None:
        return lookup(override, "project.link")
    return LINKS[DEFAULT.get(device, "PCIe4")]


@dataclass(frozen=True)
class Fabric:
    """What a ring of `ranks` GPUs over `nodes` machines crosses."""
    ranks: int
    nodes: int
    link: Link           # within a node
    network: Link | None  # between nodes; None on one node

    @property
    def bus_bandwidth(self) -> float:
        """The slowest link the ring crosses."""
        if self.network is None:
            return self.link.bus_bandwidth
        return min(self.link.bus_bandwidth, self.network.bus_bandwidth)

    @property
    def latency_s(self) -> float:
        return self.link.latency_s if self.network is None else max(self.link.latency_s, self.network.latency_s)

    def describe(self) -> str:
        inside = f"{self.ranks // self.nodes} GPUs per node on {self.link.name}"
        return inside if self.network is None else f"{self.nodes} nodes x {inside}, {self.network.name} between"

    def seconds(self, kind: str, payload: int) -> float:
        """One collective's time; on one rank there is nothing to exchange."""
        if self.ranks == 1:
            return 0.0
        return self.latency_s + FACTOR[kind](self.ranks) * payload / self.bus_bandwidth


def fabric(device: str, ranks: int, nodes: int, link: str | None, network: str) -> Fabric:
    return Fabric(ranks, nodes, node_link(device, link), lookup(network, "project.network") if nodes > 1 else None)


def listing() -> str:
    return "\n".join(f"{k}: busbw {v.bus_bandwidth / GB:.0f} GB/s, latency {v.latency_s * 1e6:.0f} us ({v.source})"
                     for k, v in LINKS.items())
