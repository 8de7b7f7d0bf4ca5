"""Hugging Face models: a LlamaForCausalLM built from our shapes, or a local causal-LM checkpoint.

Optional: needs `pip install -e ".[hf]"`. Never touches the network: configs are built in code
and checkpoints load with local_files_only=True. The wrapper returns logits, so the trainer,
counters and strategies treat every model alike (strategies match `q_proj ... lm_head` through
bench/models/strategies.py's ROLE_NAMES).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from bench.config import ConfigError, ModelConfig


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("model.kind", "Hugging Face models need the hf extra: pip install -e \".[hf]\"") from None
    return transformers


class CausalLM(nn.Module):
    """Wraps a transformers causal LM: forward(input_ids) -> logits, no cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.embedding_grad = True  # see bench/models/model.py: head_only detaches the embedding lookup
        model.get_input_embeddings().register_forward_hook(self._maybe_detach)

    def _maybe_detach(self, module, args, output):
        return output if self.embedding_grad else output.detach()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def build_llama(cfg: ModelConfig) -> CausalLM:
    """A LlamaForCausalLM with cfg's shapes, randomly initialised (no download)."""
    tf = _transformers()
    config = tf.LlamaConfig(
        hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, intermediate_size=cfg.hidden, vocab_size=cfg.vocab_size,
        max_position_embeddings=cfg.max_seq_len, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False)
    return CausalLM(tf.LlamaForCausalLM(config))


def _hub_id(path: str) -> bool:
    """`org/name`, as the Hugging Face hub names a model, and no such local path."""
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~")) and not Path(path).exists()


def from_hub(path: str, weights: bool) -> CausalLM:
    """A hub id from the local Hugging Face cache (HF_HUB_CACHE, read at the call), offline: its
    config.json is all a projection needs; measuring needs its weights there too."""
    tf = _transformers()
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        config = tf.AutoConfig.from_pretrained(path, cache_dir=cache, local_files_only=True)
    except Exception:  # not cached, or not a model id
        raise ConfigError("model.path", f"{path!r} is not in the local Hugging Face cache ({cache or 'the default'}); "
                                        f"fetch its config first: huggingface-cli download {path} config.json") from None
    if not weights:
        return CausalLM(tf.AutoModelForCausalLM.from_config(config))
    try:
        return CausalLM(tf.AutoModelForCausalLM.from_pretrained(path, cache_dir=cache, local_files_only=True,
                                                               torch_dtype=torch.float32))
    except Exception as e:
        raise ConfigError("model.path", f"{path}: its weights are not in the local cache ({type(e).__name__}); "
                                        "project it instead (project.gpu=...), which needs its config.json only") from None


def load_local(path: str, weights: bool = True) -> CausalLM:
    """Any local causal-LM checkpoint directory, or a hub id in the local cache, offline; a one-line
    ConfigError otherwise. `weights` false (a projection): built from its config.json alone, which
    is all it needs."""
    tf = _transformers()
    p = Path(path)
    if not p.is_dir() and _hub_id(path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return from_hub(path, weights)
    if not p.is_dir():
        raise ConfigError("model.path", f"{path!r} is not a directory, nor a hub id (org/name)")
    if not (p / "config.json").is_file():
        raise ConfigError("model.path", f"{path!r} holds no config.json: not a Hugging Face model directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if not weights:
            return CausalLM(tf.AutoModelForCausalLM.from_config(tf.AutoConfig.from_pretrained(str(p), local_files_only=True)))
        model = tf.AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, torch_dtype=torch.float32)
    except Exception as e:  # wrong architecture, missing weights, corrupt files
        raise ConfigError("model.path", f"{path}: cannot load a causal LM ({type(e).__name__}: "
                                        f"{str(e).splitlines()[0][:160]})") from None
    return CausalLM(model)


def shape(model: nn.Module) -> dict:
    """The shape figures reports group by, read off a Hugging Face model's config."""
    c = model.model.config if isinstance(model, CausalLM) else model.config
    return {"dim": c.hidden_size, "n_layers": c.num_hidden_layers, "hidden": getattr(c, "intermediate_size", None),
            "vocab_size": c.vocab_size, "max_seq_len": getattr(c, "max_position_embeddings", None)}


def local_tokenizer(path: str):
    """The checkpoint's own tokenizer as text -> ids, or None when the directory has none."""
    p = Path(path)
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    tok = _transformers().AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]
