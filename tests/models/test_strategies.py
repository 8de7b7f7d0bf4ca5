import pytest
import torch

from bench.config import ConfigError
from bench.measure.counters import param_counts
from bench.models.model import Transformer
from bench.models.strategies import STRATEGIES, apply_strategy, get_strategy

# minimind_v1: d=512, kv=256 (8 of 16 heads x 32), FFN 1408, vocab 6400, 8 blocks.
# An adapter on an n->m layer has r(n+m) parameters.
D, KV, H, V, L = 512, 256, 1408, 6400, 8
PER_BLOCK = {"q": D + D, "k": D + KV, "v": D + KV, "o": D + D, "gate": D + H, "up": D + H, "down": H + D}
HEAD = D + V


def _blocks(*roles):
    return L * sum(PER_BLOCK[r] for r in roles)


CLOSED_FORM = {  # trainable parameters per unit of rank
    "lora_all": _blocks(*PER_BLOCK),
    "lora_qk": _blocks("q", "k"),
    "lora_qv": _blocks("q", "v"),
    "lora_attn": _blocks("q", "k", "v", "o"),
    "lora_ffn": _blocks("gate", "up", "down"),
    "lora_square": _blocks("q", "o"),  # wk, wv are 512->256; the FFN and head are not square
    "lora_last": HEAD,
}


def _trainable(cfg_of, *overrides):
    cfg = cfg_of("model=minimind_v1", *overrides)
    with torch.device("meta"):
        model = Transformer(cfg.model)
    apply_strategy(model, get_strategy(cfg.strategy.name), cfg.lora)
    return param_counts(model), model


def test_closed_form_of_lora_all_is_the_issue_figure():
    assert CLOSED_FORM["lora_all"] == 74_752


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
@pytest.mark.parametrize("rank", [2, 8, 32])
def test_trainable_counts_match_closed_form(cfg_of, name, rank):
    counts, _ = _trainable(cfg_of, f"strategy={name}", f"lora.rank={rank}")
    assert counts["trainable"] == CLOSED_FORM[name] * rank
    assert counts["total"] == 26_878_464 + CLOSED_FORM[name] * rank


def test_full_head_only_and_include_head(cfg_of):
    assert _trainable(cfg_of, "strategy=full")[0]["trainable"] == 26_878_464
    assert _trainable(cfg_of, "strategy=head_only")[0]["trainable"] == V * D  # the tied matrix
    counts, _ = _trainable(cfg_of, "strategy=lora_all", "lora.include_head=true", "lora.rank=8")
    assert counts["trainable"] == 8 * (CLOSED_FORM["lora_all"] + HEAD)


def test_layers_and_targets_restrict_the_selection(cfg_of):
    counts, model = _trainable(cfg_of, "strategy=lora_all", "lora.layers=[-1]", "lora.rank=4")
    assert counts["trainable"] == 4 * CLOSED_FORM["lora_all"] // L
    assert all(".7." in n for n, p in model.named_parameters() if p.requires_grad)
    counts, _ = _trainable(cfg_of, "strategy=lora_all", "lora.targets=[wq,w2]", "lora.rank=4")
    assert counts["trainable"] == 4 * L * (PER_BLOCK["q"] + PER_BLOCK["down"])


@pytest.mark.parametrize("overrides, key", [
    (["strategy=lora_qk", "lora.rank=257"], "lora.rank"),          # wk is 512->256
    (["strategy=lora_all", "lora.targets=[nothing_*]"], "lora.targets"),
    (["strategy=lora_all", "lora.layers=[8]"], "lora.layers"),
    (["strategy=lora_last", "lora.layers=[0]"], "lora.layers"),   # the head is in no block
])
def test_invalid_selections_name_their_key(cfg_of, overrides, key):
    with pytest.raises(ConfigError) as e:
        _trainable(cfg_of, *overrides)
    assert e.value.key == key and "\n" not in str(e.value)


def test_unknown_strategy():
    with pytest.raises(ConfigError, match="strategy"):
        get_strategy("lora_everything")


def test_every_strategy_has_a_config_file():
    from bench.cli import group_options

    assert group_options("strategy") == sorted(STRATEGIES)
