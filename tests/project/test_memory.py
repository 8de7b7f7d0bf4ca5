"""LiveMemory (bench/project/memory.py) against PyTorch's MemTracker on the same fake step; under FSDP
against FSDPMemTracker: tests/project/test_parallel.py."""
import pytest

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


def test_a_checkpointed_steps_peak_is_the_real_steps():
    """Recomputed activations are freed as backward goes: the fake step's peak is the one PyTorch's
    MemTracker sees on real tensors (a FlopCounterMode in the fake step once kept them all: 2.1x)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from bench.measure.trainer import Trainer
    from bench.project.memory import _skip_frozen
    from tests.conftest import built

    ov = ["model=hf_llama", "strategy=lora_qv", "model.n_layers=8", "model.dim=256", "model.ffn_hidden=1024",
          "train.batch_size=2", "train.seq_len=512", "model.max_seq_len=1024", "train.checkpointing=blocks"]
    cfg, s = built(*ov)
    trainer = Trainer(s.model, cfg, s.adapters["B"])
    batch = list(s.train_batches(cfg, 1))[0][0]
    tracker = MemTracker()
    _skip_frozen(tracker, s.model)
    tracker.track_external(s.model, trainer.optimizer)
    with tracker:
        trainer.loss(batch).backward()
    real = next(iter(tracker.get_tracker_snapshot("peak").values()))["Total"]
    fake = fake_step(_cfg(*ov, "project.gpu=H100"), batch_size=2)
    assert fake.stages["backward"]["peak"] == pytest.approx(real, rel=0.10)
