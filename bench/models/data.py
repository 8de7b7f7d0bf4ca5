"""Token sources. Each gives batches of (inputs, targets) and, where known, the loss floor.

- random: uniform tokens; floor ln(V). For timing only.
- markov: a seeded sparse Markov chain (each token has `branching` successors); its entropy
  rate, computed exactly, is the lowest cross-entropy any model can reach on it.
- jsonl: {"text": ...} per line, tokenized by a model's own tokenizer or as UTF-8 bytes; no known floor.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from bench.config import ConfigError, DataConfig


class TokenSource:
    floor: float | None = None

    def batch(self, batch_size: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
        """A (batch_size, seq_len + 1) int64 tensor; inputs are [:, :-1], targets [:, 1:]."""
        raise NotImplementedError


class RandomTokens(TokenSource):
    def __init__(self, vocab: int):
        self.vocab = vocab
        self.floor = math.log(vocab)

    def batch(self, batch_size, seq_len, gen):
        return torch.randint(0, self.vocab, (batch_size, seq_len + 1), generator=gen)


class MarkovChain(TokenSource):
    """Token i moves to succ[i, j] with probability prob[i, j] (j < branching).

    One successor of every token is a fixed random cyclic permutation, so the chain is
    irreducible; token 0 also loops to itself, so it is aperiodic and has one stationary law.
    """

    def __init__(self, vocab: int, branching: int, seed: int, shift: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.vocab, self.branching = vocab, branching
        cycle = torch.randperm(vocab, generator=g)
        nxt = torch.empty(vocab, dtype=torch.long)
        nxt[cycle] = cycle.roll(-1)
        succ = torch.randint(0, vocab, (vocab, branching), generator=g)
        succ[:, 0] = nxt
        if branching > 1:
            succ[0, 1] = 0
        # Skewed weights (exponential draws cubed) give each state a few likely successors.
        w = torch.empty(vocab, branching).exponential_(generator=g).pow(3).double() + 1e-3
        if shift > 0:
            # A related language: redraw the transitions of a seeded share of the states, keeping
            # the cycle successor (column 0) so the chain stays irreducible.
            g2 = torch.Generator().manual_seed(seed + 7919)
            rows = torch.randperm(vocab, generator=g2)[: round(shift * vocab)]
            succ[rows, 1:] = torch.randint(0, vocab, (len(rows), branching - 1), generator=g2)
            w[rows] = torch.empty(len(rows), branching).exponential_(generator=g2).pow(3).double() + 1e-3
        self.succ = succ
        # Normalised in float64: float32 rows miss 1 by ~1e-7 and the power iteration would drift.
        self.prob = w / w.sum(1, keepdim=True)
        self.cum = self.prob.cumsum(1).float()
        self.cum[:, -1] = 1.0
        self.stationary = self._stationary()
        # A successor may be drawn twice in a row: merge duplicates before taking logs,
        # H(row) = -sum_j prob_j * log P(succ_j), with P summed over equal successors.
        same = succ[:, :, None] == succ[:, None, :]
        merged = (self.prob[:, None, :] * same).sum(-1)
        row_entropy = -(self.prob * merged.log()).sum(1)
        self.floor = float((self.stationary * row_entropy).sum())

    def _stationary(self, tol: float = 1e-12, max_iter: int = 100_000) -> torch.Tensor:
        pi = torch.full((self.vocab,), 1.0 / self.vocab, dtype=torch.float64)
        flat_succ = self.succ.flatten()
        for _ in range(max_iter):
            new = torch.zeros_like(pi).index_add_(0, flat_succ, (pi[:, None] * self.prob).flatten())
            # Lazy averaging damps any slow oscillation.
            new = 0.5 * (new + pi)
            if (new - pi).abs().sum() < tol:
                return new
            pi = new
        return pi

    def batch(self, batch_size, seq_len, gen):
        out = torch.empty(batch_size, seq_len + 1, dtype=torch.long)
        state = torch.multinomial(self.stationary.float(), batch_size, replacement=True, generator=gen)
        out[:, 0] = state
        for t in range(1, seq_len + 1):
            u = torch.rand(batch_size, 1, generator=gen)
            j = torch.searchsorted(self.cum[state], u).clamp_(max=self.branching - 1).squeeze(1)
            state = self.succ[state, j]
            out[:, t] = state
        return out


class JsonlText(TokenSource):
    """{"text": ...} per line, tokenized by `encode` (a model's own tokenizer), or as UTF-8 bytes."""

    def __init__(self, path: str, encode=None):
        p = Path(path)
        if not p.is_file():
            raise ConfigError("data.path", f"{path!r} is not a file")
        texts = []
        with p.open("r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError("data.path", f"{path}:{lineno}: not JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise ConfigError("data.path", f'{path}:{lineno}: no string "text" field')
                texts.append(obj["text"] + "\n")
        if not texts:
            raise ConfigError("data.path", f"{path!r} holds no text")
        if encode is None:
            self.tokens = torch.frombuffer(bytearray("".join(texts).encode("utf-8")), dtype=torch.uint8).long()
        else:
            self.tokens = torch.tensor([t for text in texts for t in encode(text)], dtype=torch.long)

    def batch(self, batch_size, seq_len, gen):
        n = self.tokens.numel()
        if n < seq_len + 2:
            raise ConfigError("data.path", f"holds {n} bytes, fewer than train.seq_len+1={seq_len + 1}")
        starts = torch.randint(0, n - seq_len - 1, (batch_size,), generator=gen)
        return torch.stack([self.tokens[s:s + seq_len + 1] for s in starts.tolist()])


def make_source(cfg: DataConfig, vocab: int, encode=None) -> TokenSource:
    """The token source for `cfg`; `encode` (text -> ids) is a model's own tokenizer, for jsonl."""
    if cfg.name == "random":
        return RandomTokens(vocab)
    if cfg.name == "markov":
        return MarkovChain(vocab, cfg.branching, cfg.seed, cfg.shift)
    if cfg.name == "jsonl":
        if encode is None and vocab < 256:
            raise ConfigError("data", f"data=jsonl uses byte tokens and needs a vocabulary of >= 256, not {vocab}")
        return JsonlText(cfg.path, encode)
    raise ConfigError("data", f"{cfg.name!r} is not one of random, markov, jsonl")
