"""Hugging Face models and the PEFT backend (the hf extra; skipped without it)."""
import pytest

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from bench.job import run_job  # noqa: E402
from tests.conftest import FAST, built, compose_cfg  # noqa: E402

# hf_llama: d=128, kv=64 (2 of 4 heads x 32), FFN 384, vocab 256, 2 blocks; r(n+m) per adapter.
D, KV, H, V, L = 128, 64, 384, 256, 2
PER_BLOCK = {"q": D + D, "k": D + KV, "v": D + KV, "o": D + D, "gate": D + H, "up": D + H, "down": H + D}
CLOSED = {"lora_all": L * sum(PER_BLOCK.values()), "lora_qk": L * (PER_BLOCK["q"] + PER_BLOCK["k"]),
          "lora_qv": L * (PER_BLOCK["q"] + PER_BLOCK["v"]), "lora_attn": L * (2 * (D + D) + 2 * (D + KV)),
          "lora_ffn": L * 3 * (D + H), "lora_square": L * 2 * (D + D), "lora_last": D + V}


def _prepared(*overrides):
    cfg, s = built("model=hf_llama", *overrides)
    return cfg, s.source, s.model, s


def test_a_local_checkpoint_loads_through_model_hf(tmp_path):
    _, _, native, _ = _prepared("strategy=full")
    native.model.save_pretrained(tmp_path / "tiny_llama")
    rec = run_job(compose_cfg([*FAST, "model=hf", f"model.path={tmp_path / 'tiny_llama'}",
                               "strategy=lora_qk"]), tmp_path / "job")
    assert rec.status == "ok", rec.outcome and rec.outcome.reason
    assert rec.model_shape.dim == 128 and rec.params.trainable == 8 * CLOSED["lora_qk"]
    rec = run_job(compose_cfg([*FAST, "model=hf", f"model.path={tmp_path / 'tiny_llama'}",
                               "strategy=lora_all", "lora.targets=[c_attn]"]), tmp_path / "gpt2_names")
    assert rec.status == "invalid" and "matches no linear layer" in rec.outcome.reason
    (tmp_path / "empty").mkdir()
    rec = run_job(compose_cfg([*FAST, "model=hf", f"model.path={tmp_path / 'empty'}"]), tmp_path / "e")
    assert rec.status == "invalid" and "no config.json" in rec.outcome.reason and "\n" not in rec.outcome.reason


def test_jsonl_uses_the_checkpoints_own_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "the", "cat", "sat", "on", "mat", "a", "dog"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    _, _, native, _ = _prepared("strategy=full")
    native.model.save_pretrained(tmp_path / "m")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join('{"text": "the cat sat on the mat a dog sat"}' for _ in range(20)) + "\n")
    from bench.models.data import JsonlText

    _, s = built("model=hf", f"model.path={tmp_path / 'm'}", "data=jsonl", f"data.path={data}")
    source = s.source
    assert isinstance(source, JsonlText) and int(source.tokens.max()) < len(words)  # word ids, not bytes
    rec = run_job(compose_cfg([*FAST, "model=hf", f"model.path={tmp_path / 'm'}", "data=jsonl",
                               f"data.path={data}", "strategy=lora_qk"]), tmp_path / "job")
    assert rec.status == "ok", rec.outcome and rec.outcome.reason


def test_a_hub_id_resolves_from_the_local_cache_for_a_projection(tmp_path, monkeypatch):
    """model=hf model.path=org/name: its config.json from a Hugging Face cache laid out as the hub
    client lays it out (models--org--name/snapshots/<revision>/, refs/main), offline."""
    import transformers

    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=128, vocab_size=256, max_position_embeddings=128)
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    config.save_pretrained(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ov = [*FAST, "model=hf", "strategy=lora_qk", "project.gpu=H100", "data=random"]
    rec = run_job(compose_cfg([*ov, "model.path=acme/tiny-llama"]), tmp_path / "job")
    assert rec.status == "ok", rec.outcome and rec.outcome.reason
    assert rec.kind == "projected" and rec.model_shape.dim == 64 and rec.model_shape.n_layers == 2
    # the adapters of q (64 -> 64) and k (64 -> 32) at rank 8, in both blocks
    assert rec.params.trainable == 2 * 8 * ((64 + 64) + (64 + 32))
    missing = run_job(compose_cfg([*ov, "model.path=acme/not-cached"]), tmp_path / "missing")
    assert missing.status == "invalid" and "not in the local Hugging Face cache" in missing.outcome.reason
    assert "huggingface-cli download acme/not-cached config.json" in missing.outcome.reason
    assert "\n" not in missing.outcome.reason
