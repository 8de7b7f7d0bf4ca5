import json
import math

import pytest
import torch

from bench.config import ConfigError
from bench.models.data import JsonlText, MarkovChain, RandomTokens


def test_markov_stationary_law_and_floor():
    chain = MarkovChain(vocab=64, branching=4, seed=3)
    assert torch.allclose(chain.prob.sum(1), torch.ones(64, dtype=torch.float64))
    pi = chain.stationary
    pushed = torch.zeros_like(pi).index_add_(0, chain.succ.flatten(), (pi[:, None] * chain.prob).flatten())
    torch.testing.assert_close(pushed, pi, rtol=0, atol=1e-10)
    assert 0 < chain.floor < math.log(4)  # at most log(branching) nats per token


def test_markov_samples_follow_the_chain_and_reach_the_floor():
    chain = MarkovChain(vocab=64, branching=4, seed=3)
    seq = chain.batch(64, 256, torch.Generator().manual_seed(0))
    prev, nxt = seq[:, :-1].flatten(), seq[:, 1:].flatten()
    match = chain.succ[prev] == nxt[:, None]
    assert match.any(1).all()  # every transition is to a listed successor
    # The true model's mean negative log-likelihood on samples is the entropy rate.
    p = (chain.prob[prev] * match).sum(1)
    assert float(-p.log().mean()) == pytest.approx(chain.floor, rel=0.03)


def test_same_seed_same_language():
    a, b = MarkovChain(32, 3, seed=7), MarkovChain(32, 3, seed=7)
    assert torch.equal(a.succ, b.succ) and a.floor == b.floor
    assert MarkovChain(32, 3, seed=8).floor != a.floor


def test_random_tokens_floor():
    src = RandomTokens(100)
    assert src.floor == pytest.approx(math.log(100))
    assert src.batch(3, 5, torch.Generator()).shape == (3, 6)


def test_jsonl_bytes(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"text": t}) for t in ["héllo", "world"]) + "\n")
    src = JsonlText(str(f))
    assert bytes(src.tokens.tolist()) == "héllo\nworld\n".encode()
    assert src.batch(2, 4, torch.Generator().manual_seed(0)).shape == (2, 5)


@pytest.mark.parametrize("content, where", [
    ('{"text": "ok"}\nnot json\n', ":2:"),
    ('{"text": "ok"}\n{"txt": "x"}\n', ":2:"),
    ("", "holds no text"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, where):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ConfigError) as e:
        JsonlText(str(f))
    assert e.value.key == "data.path" and where in str(e.value) and "\n" not in str(e.value)


def test_jsonl_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not a file"):
        JsonlText(str(tmp_path / "nope.jsonl"))
