"""LiveMemory (bench/project/memory.py) against PyTorch's MemTracker on the same fake step; under FSDP
against FSDPMemTracker: tests/project/test_parallel.py."""
from bench.project.fake import fake_step
from tests.project.test_fake import _cfg


def test_live_memory_equals_memtracker():
    for strategy in ("full", "lora_all"):
        cfg = _cfg(f"strategy={strategy}")
        a, b = fake_step(cfg), fake_step(cfg, memtracker=True)
        assert a.peak_bytes == b.peak_bytes
        for k in ("parameters", "buffers", "gradients", "optimizer"):
            assert a.split[k] == b.split[k], k
        # one scalar's storage may be filed as a temporary by one and an activation by the other
        assert abs(a.split["activations"] - b.split["activations"]) <= 8
