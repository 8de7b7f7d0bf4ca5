import pytest
import torch

from bench.models.model import Transformer, param_count
from tests.conftest import compose_cfg


def _model_cfg(name):
    from bench.config import load_config

    return load_config(compose_cfg([f"model={name}"])).model


@pytest.mark.parametrize("name", ["tiny", "minimind_v1", "minimind2_small", "minimind3"])
def test_param_count_matches_closed_form(name):
    cfg = _model_cfg(name)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = Transformer(cfg)
    assert sum(p.numel() for p in model.parameters()) == param_count(cfg)


def test_minimind_v1_has_the_reported_size():
    # MiniMind v1 (github.com/jingyaogong/minimind): dim 512, 8 layers, 16/8 heads, FFN 1408, vocab 6400, tied head.
    assert param_count(_model_cfg("minimind_v1")) == 26_878_464


def test_ffn_hidden_rule():
    from bench.config import ModelConfig

    base = dict(name="x", kind="native", path=None, n_layers=1, n_heads=8, n_kv_heads=8, vocab_size=10, max_seq_len=8,
                rope_theta=1e4, norm_eps=1e-5, ffn_hidden=None, checkpoint=None, tie_embeddings=True)
    assert ModelConfig(dim=512, **base).hidden == 1408  # MiniMind: int(8 * 512 / 3) rounded up to 64
    assert ModelConfig(dim=128, **base).hidden == 384


def test_head_is_tied_and_model_is_causal():
    torch.manual_seed(0)
    model = Transformer(_model_cfg("tiny")).eval()
    assert model.output.weight is model.tok_embeddings.weight
    x = torch.randint(0, 256, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 256  # change only the future
    with torch.no_grad():
        a, b = model(x), model(y)
    assert a.shape == (2, 12, 256)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])
