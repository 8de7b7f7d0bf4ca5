"""Hugging Face models and the PEFT backend (the hf extra; skipped without it)."""
import pytest
import torch

peft = pytest.importorskip("peft")
pytest.importorskip("transformers")

from bench.build.lora import lora_modules  # noqa: E402
from bench.job import run_job  # noqa: E402
from bench.measure.timer import StepTimer  # noqa: E402
from tests.conftest import FAST, built, compose_cfg, trainer_of  # noqa: E402

# hf_llama: d=128, kv=64 (2 of 4 heads x 32), FFN 384, vocab 256, 2 blocks; r(n+m) per adapter.
D, KV, H, V, L = 128, 64, 384, 256, 2
PER_BLOCK = {"q": D + D, "k": D + KV, "v": D + KV, "o": D + D, "gate": D + H, "up": D + H, "down": H + D}
CLOSED = {"lora_all": L * sum(PER_BLOCK.values()), "lora_qk": L * (PER_BLOCK["q"] + PER_BLOCK["k"]),
          "lora_qv": L * (PER_BLOCK["q"] + PER_BLOCK["v"]), "lora_attn": L * (2 * (D + D) + 2 * (D + KV)),
          "lora_ffn": L * 3 * (D + H), "lora_square": L * 2 * (D + D), "lora_last": D + V}


def _prepared(*overrides):
    cfg, s = built("model=hf_llama", *overrides)
    return cfg, s.source, s.model, s


@pytest.mark.parametrize("strategy", sorted(CLOSED))
def test_trainable_counts_match_peft_and_the_closed_form(strategy):
    _, _, native, _ = _prepared(f"strategy={strategy}", "lora.rank=4")
    _, _, wrapped, _ = _prepared(f"strategy={strategy}", "lora.rank=4", "lora.backend=peft")
    trainable_peft, _ = wrapped.get_nb_trainable_parameters()  # what print_trainable_parameters prints
    trainable_native = sum(p.numel() for p in native.parameters() if p.requires_grad)
    assert trainable_native == trainable_peft == 4 * CLOSED[strategy]


def test_native_and_peft_follow_the_same_loss_trajectory():
    cfg, source, native, s_native = _prepared("strategy=lora_all", "lora.rank=4", "lora.alpha=8")
    _, _, wrapped, s_peft = _prepared("strategy=lora_all", "lora.rank=4", "lora.alpha=8", "lora.backend=peft")
    torch.manual_seed(1)
    for name, layer in lora_modules(native):  # same start, and B non-zero so the adapters matter
        with torch.no_grad():
            layer.lora_b.normal_(std=0.02)
        target = wrapped.base_model.model.get_submodule(name)
        with torch.no_grad():
            target.lora_A["default"].weight.copy_(layer.lora_a)
            target.lora_B["default"].weight.copy_(layer.lora_b)
    gen = torch.Generator().manual_seed(3)
    batches = [source.batch(4, 32, gen) for _ in range(5)]
    losses = {}
    for key, s in (("native", s_native), ("peft", s_peft)):
        trainer = trainer_of(cfg, s)
        losses[key] = [trainer.step([b], StepTimer(torch.device("cpu")))[0] for b in batches]
    assert losses["native"] == pytest.approx(losses["peft"], rel=1e-5)
    assert losses["native"][-1] < losses["native"][0]


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


def test_peft_refuses_what_it_cannot_express():
    from bench.config import ConfigError

    with pytest.raises(ConfigError, match="lora.init"):
        _prepared("strategy=lora_qk", "lora.backend=peft", "lora.init=B")
    with pytest.raises(ConfigError, match="lora.backend"):
        _prepared("strategy=full", "lora.backend=peft")


def test_lora_plus_groups_find_peft_names():
    cfg, _, wrapped, s = _prepared("strategy=lora_qk", "lora.backend=peft", "lora.lr_ratio=16", "train.lr=0.001")
    groups = trainer_of(cfg, s).optimizer.param_groups
    assert sorted((g["lr"], len(g["params"])) for g in groups) == [(0.001, 4), (0.016, 4)]
    names = {id(p): n for n, p in wrapped.named_parameters()}
    fast = next(g for g in groups if g["lr"] == 0.016)
    assert all(".lora_B." in names[id(p)] for p in fast["params"])  # found through PEFT's layers


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
    from bench.build.data import JsonlText

    _, s = built("model=hf", f"model.path={tmp_path / 'm'}", "data=jsonl", f"data.path={data}")
    source = s.source
    assert isinstance(source, JsonlText) and int(source.tokens.max()) < len(words)  # word ids, not bytes
    rec = run_job(compose_cfg([*FAST, "model=hf", f"model.path={tmp_path / 'm'}", "data=jsonl",
                               f"data.path={data}", "strategy=lora_qk"]), tmp_path / "job")
    assert rec.status == "ok", rec.outcome and rec.outcome.reason
