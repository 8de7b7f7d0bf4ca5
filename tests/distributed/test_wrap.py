"""Which modules the data-parallel wrappers act on."""
from bench.distributed.wrap import blocks
from tests.conftest import built


def test_blocks_are_the_models_transformer_layers():
    _, s = built("model=tiny", "strategy=lora_all")
    assert blocks(s.model) == list(s.model.layers)


def test_blocks_are_found_under_peft_and_hugging_face_wrappers():
    import pytest

    pytest.importorskip("peft")
    _, s = built("model=hf_llama", "strategy=lora_qk", "lora.backend=peft")
    found = blocks(s.model)
    assert len(found) == s.shape.n_layers and all(type(b).__name__ == "LlamaDecoderLayer" for b in found)
