"""The reference implementation: a strategy expressed as PEFT's LoraConfig, applied with get_peft_model.

The targets are chosen by the same code as the native backend (bench/models/strategies.py), then
handed to PEFT as explicit module names, so both backends adapt exactly the same layers.
Where a setting has no PEFT equivalent the job is refused (`invalid`) or the difference is
written into the record's plan, never silently changed.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.models.strategies import Strategy, check_rank, make_plan, select_targets
from bench.config import ConfigError, LoraConfig, PeftConfig, QuantConfig
from bench.record.schema import Plan, Quant

_COMPUTE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def apply_peft(model: nn.Module, strategy: Strategy, lora: LoraConfig, peft_cfg: PeftConfig,
               quant: QuantConfig, precision: str) -> tuple[nn.Module, Plan, Quant | None]:
    """PEFT's model, the plan, and (quant.base=nf4) the quantization: bitsandbytes' Linear4bit under
    PEFT's LoRA layers, compute dtype from train.precision, as Hugging Face's QLoRA runs."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        raise ConfigError("lora.backend", "lora.backend=peft needs the hf extra: pip install -e \".[hf]\"") from None
    adapted, trained = [], []
    notes, quantized = [], None
    if strategy.uses_lora:
        targets = select_targets(model, strategy, lora)
        check_rank(model, targets, lora.rank)
        if quant.base != "none":
            from bench.models.quant import quantize_bnb

            quantized = quantize_bnb(model, quant, targets, _COMPUTE[precision])
        if lora.init == "B":
            raise ConfigError("lora.init", "PEFT has no scheme with A = 0 and B random (Init[B]); "
                                           "use lora.init=A or gaussian, or lora.backend=native")
        init = True if lora.init == "A" else "gaussian"
        if lora.init == "gaussian":
            notes.append(f"PEFT's gaussian init draws A with std 1/rank, not lora.init_std={lora.init_std}")
        config = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
                                use_rslora=lora.rslora, lora_dropout=lora.dropout, target_modules=targets,
                                init_lora_weights=init, bias="none", use_dora=lora.dora)
        adapted = targets
    else:  # head_only: the head trained at full rank, as PEFT's modules_to_save (a trainable copy)
        heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1]
                 in ("output", "lm_head")]
        if not heads:
            raise ConfigError("strategy", f"strategy={strategy.name}: this model has no output head named output/lm_head")
        # PEFT needs some adapter; a rank-1 adapter on the head with its B at zero changes nothing
        # and is frozen below, so only the saved copy of the head trains.
        config = PeftLoraConfig(r=1, target_modules=heads, modules_to_save=heads, init_lora_weights=True)
        notes.append("head_only through PEFT: modules_to_save trains an untied copy of the head")
        trained = heads
    wrapped = get_peft_model(model, config, autocast_adapter_dtype=peft_cfg.autocast_adapter_dtype)
    # PEFT owns requires_grad inside its model (get_peft_model froze the base); only head_only
    # needs a correction: its placeholder adapter must not train.
    if not strategy.uses_lora:
        for roles in peft_adapter_params(wrapped).values():
            for p in roles:
                p.requires_grad_(False)
    return wrapped, make_plan(strategy, lora, adapted, trained, notes), quantized


def peft_adapter_params(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """PEFT's adapter parameters by role, read off its own LoraLayer modules (lora_A, lora_B, and
    DoRA's lora_magnitude_vector as "M")."""
    from peft.tuners.lora import LoraLayer

    out: dict[str, list[nn.Parameter]] = {"A": [], "B": [], "M": []}
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for role, table in (("A", module.lora_A), ("B", module.lora_B), ("M", module.lora_magnitude_vector)):
                out[role] += [p for layer in table.values() for p in layer.parameters()]
    return out
