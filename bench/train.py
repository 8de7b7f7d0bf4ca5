"""One measured fine-tuning run: build, apply the strategy, count one step, time the rest.

Step order: 1 counting step (FLOPs, ops, saved activations, gradient and optimizer-state
bytes; slow under the counters, so untimed), `warmup_steps` untimed steps, `steps` timed steps.
The record is filled in place as figures become known, so a job that fails halfway still
leaves everything it measured up to that point.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench import counters, memory
from bench.calibrate import calibrate
from bench.config import BenchConfig, ConfigError
from bench.data import make_source
from bench.model import Transformer
from bench.records import STEPS, StepLog
from bench.strategies import apply_strategy, get_strategy
from bench.timer import StepTimer

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Diverged(RuntimeError):
    def __init__(self, step: int, last_finite: float | None):
        self.step, self.last_finite = step, last_finite
        super().__init__(f"loss is not finite at step {step} (last finite loss: {last_finite})")


class OutOfMemory(RuntimeError):
    """The device allocator or the host memory cap refused step `step`."""

    def __init__(self, step: int, where: str, detail: str):
        self.step, self.where = step, where
        super().__init__(f"out of {where} memory at step {step}: {detail}")


def resolve_device(cfg: BenchConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for, but torch sees no CUDA device (use device=cpu or auto)")
    dev = torch.device("cuda" if cfg.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    if cfg.train.precision == "fp16" and dev.type != "cuda":
        raise ConfigError("train.precision", "fp16 needs a CUDA device (its grad scaler is CUDA-only); use bf16 or fp32")
    return dev


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def param_groups(model, lr: float, lr_ratio: float) -> list[dict]:
    """AdamW groups; with LoRA+ (lr_ratio != 1), the B matrices learn lr_ratio times faster than A."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if lr_ratio == 1.0:
        return [{"params": [p for _, p in trainable], "lr": lr}]
    # Ours: "...wq.lora_b"; PEFT's: "...q_proj.lora_B.default.weight".
    is_b = [("lora_b" in n.lower().split(".")) for n, _ in trainable]
    b = [p for (_, p), x in zip(trainable, is_b) if x]
    rest = [p for (_, p), x in zip(trainable, is_b) if not x]
    return [g for g in ({"params": rest, "lr": lr}, {"params": b, "lr": lr * lr_ratio}) if g["params"]]


class Trainer:
    """Holds the model and optimizer; `step()` is the loop body that gets timed."""

    def __init__(self, model, cfg: BenchConfig, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.train.lr, cfg.lora.lr_ratio),
                                           lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        precision = cfg.train.precision
        self.autocast = (torch.autocast(device.type, dtype=_DTYPES[precision])
                         if precision in _DTYPES else nullcontext())
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        self.clip = cfg.train.grad_clip

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            logits = self.model(batch[:, :-1])
            return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())

    def step(self, micro_batches: list[torch.Tensor], timer: StepTimer, probe=None) -> float:
        """One optimizer step over `micro_batches`; returns the mean loss.

        `probe` (counting step only) gets the saved-tensor context for the first micro-batch
        and the gradient bytes before the optimizer frees them.
        """
        n = len(micro_batches)
        losses = []
        timer.start()
        for i, batch in enumerate(micro_batches):
            with probe.saved.active() if probe is not None and i == 0 else nullcontext():
                loss = self.loss(batch)
                timer.mark("forward")
            scaled = loss / n if n > 1 else loss
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            timer.mark("backward")
            losses.append(loss)
        if probe is not None:
            probe.grads_bytes = counters.grads_bytes(self.model)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        timer.mark("optimizer")
        self.last_timings = timer.stop()
        # Read the loss after the clock stops: .item() would sync inside the step.
        return sum(float(x.detach()) for x in losses) / n

    @torch.no_grad()
    def evaluate(self, batches: list[torch.Tensor]) -> float:
        self.model.eval()
        loss = sum(float(self.loss(b)) for b in batches) / len(batches)
        self.model.train()
        return loss


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "mean": None, "p10": None, "p90": None, "std": None}
    a = np.asarray(values, dtype=float)
    return {"median": float(np.median(a)), "mean": float(a.mean()), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90)), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0}


def _one_step(i, micro, cfg, trainer, timer, record, step_rows, state, log, host, device) -> None:
    """Step i: the counting step (i == 0), a warm-up step or a timed step, logged."""
    kind = "count" if i == 0 else ("warmup" if i <= cfg.train.warmup_steps else "timed")
    if kind == "count":
        with counters.StepCounts(trainer.model) as probe:
            loss = trainer.step(micro, StepTimer(device, phases=False), probe)
        record["work"].update(flops_per_step=probe.flops, ops_per_step=probe.ops)
        record["memory"].update(
            weights_bytes=counters.weights_bytes(trainer.model),
            grads_bytes=probe.grads_bytes,
            optimizer_state_bytes=counters.optimizer_state_bytes(trainer.optimizer),
            activations_bytes=probe.saved.bytes,
        )
        del probe
        # The counting step holds extra references; peaks start after it.
        memory.reset_device(device)
        host.reset()
        row = {"step": i, "kind": kind, "loss": loss, "step_ms": None}
    else:
        loss = trainer.step(micro, timer)
        row = {"step": i, "kind": kind, "loss": loss, **trainer.last_timings}
        state["elapsed"] += row["step_ms"] / 1e3
        row["elapsed_s"] = state["elapsed"]
    log.write(row)
    if not math.isfinite(loss):
        raise Diverged(i, state["last_finite"])
    state["last_finite"] = loss
    loss_rec = record["loss"]
    if loss_rec["first"] is None:
        loss_rec["first"] = loss
    loss_rec["last"] = loss
    step_rows.append(row)


def _check_target(record: dict, state: dict, eval_loss: float, step: int, target: float | None) -> None:
    """Keep the eval curve; note the first training time and step at which eval loss reaches target."""
    record.setdefault("eval_curve", []).append({"step": step, "elapsed_s": state["elapsed"], "eval_loss": eval_loss})
    if target is not None and eval_loss <= target and state.get("to_target") is None:
        state["to_target"] = {"to_target_s": state["elapsed"], "steps_to_target": step}


def _target_fields(state: dict) -> dict:
    return state.get("to_target") or {"to_target_s": None, "steps_to_target": None}


def _time_summary(step_rows: list[dict], tokens_per_step: int) -> dict:
    timed = [r for r in step_rows if r["kind"] == "timed"]
    step_ms = [r["step_ms"] for r in timed]
    out = {"wall_s": None, "train_s": sum(step_ms) / 1e3, "timed_steps": len(step_ms), "tokens_per_s": None,
           "step_ms": _stats(step_ms)}
    for phase in ("forward", "backward", "optimizer"):
        vals = [r[f"{phase}_ms"] for r in timed if f"{phase}_ms" in r]
        out[f"{phase}_ms"] = {"median": float(np.median(vals)) if vals else None}
    med = out["step_ms"]["median"]
    out["tokens_per_s"] = tokens_per_step / (med / 1e3) if med else None
    return out


def build_model(cfg: BenchConfig) -> torch.nn.Module:
    """The base model, before any strategy: ours, a Llama built by transformers, or a local checkpoint."""
    if cfg.model.kind == "native":
        return Transformer(cfg.model)
    from bench import hf

    return hf.build_llama(cfg.model) if cfg.model.kind == "hf_llama" else hf.load_local(cfg.model.path)


def model_shape(cfg: BenchConfig, model: torch.nn.Module) -> dict:
    if cfg.model.kind == "native":
        m = cfg.model
        return {"dim": m.dim, "n_layers": m.n_layers, "hidden": m.hidden, "vocab_size": m.vocab_size,
                "max_seq_len": m.max_seq_len}
    from bench import hf

    return hf.shape(model)


def prepare(cfg: BenchConfig, device: torch.device):
    """The token source and the model (from its checkpoint, if any) with its strategy applied
    by the chosen backend. The plan carries the model's shape (a local checkpoint brings its own)."""
    from bench.checkpoint import load_weights, resolve_checkpoint

    model = build_model(cfg)
    if cfg.model.checkpoint:
        load_weights(model, resolve_checkpoint(cfg))
    shape = model_shape(cfg, model)
    if shape["max_seq_len"] and cfg.train.seq_len > shape["max_seq_len"]:
        raise ConfigError("train.seq_len", f"{cfg.train.seq_len} exceeds the model's maximum {shape['max_seq_len']}")
    encode = None
    if cfg.model.kind == "hf" and cfg.data.name == "jsonl":
        from bench.hf import local_tokenizer

        encode = local_tokenizer(cfg.model.path)  # the checkpoint's own tokenizer, if it has one
    source = make_source(cfg.data, shape["vocab_size"], encode)
    strategy = get_strategy(cfg.strategy.name)
    if cfg.lora.backend == "peft":
        from bench.peft_backend import apply_peft

        model, plan = apply_peft(model, strategy, cfg.lora, cfg.peft)
    else:
        plan = apply_strategy(model, strategy, cfg.lora)
    plan.shape = shape
    model.to(device).train()
    return source, model, plan


def run_training(cfg: BenchConfig, out_dir: Path, record: dict) -> dict:
    """Train as `cfg` says, filling `record` (the metrics.json dict) in place; returns it."""
    t_job = time.perf_counter()
    device = resolve_device(cfg)
    strategy = get_strategy(cfg.strategy.name)
    t = cfg.train

    host = memory.HostPeak()
    memory.reset_device(device)
    host.reset()
    seed_everything(t.seed)

    source, model, plan = prepare(cfg, device)
    record["plan"] = {"adapted": plan.adapted, "trained": plan.trained, "notes": plan.notes,
                      "lora_scale": cfg.lora.scale if strategy.uses_lora else None}
    record["model_shape"] = plan.shape
    record["params"] = counters.param_counts(model)

    n_steps = 1 + t.warmup_steps + t.steps
    gen = torch.Generator().manual_seed(t.seed)
    # Each step's data is made and moved to the device just before its clock starts (the
    # timer synchronizes at start), so no step waits for data and no run holds all of it.
    train_batches = ([source.batch(t.batch_size, t.seq_len, gen).to(device) for _ in range(t.grad_accum)]
                     for _ in range(n_steps))
    eval_gen = torch.Generator().manual_seed(10_000 + cfg.data.seed)  # the same held-out set for every job
    eval_batches = [source.batch(t.batch_size, t.seq_len, eval_gen).to(device) for _ in range(t.eval_batches)]

    trainer = Trainer(model, cfg, device)
    loss_rec = record["loss"] = {"first": None, "last": None, "eval_start": None, "eval_end": None,
                                 "floor": source.floor}
    loss_rec["eval_start"] = trainer.evaluate(eval_batches)

    timer = StepTimer(device, phases=t.phases)
    tokens_per_step = t.batch_size * t.seq_len * t.grad_accum
    record["work"] = {"flops_per_step": None, "ops_per_step": None, "tokens_per_step": tokens_per_step}
    record["memory"] = {}
    step_rows: list[dict] = []
    state = {"step": 0, "last_finite": None, "elapsed": 0.0}
    _check_target(record, state, loss_rec["eval_start"], 0, t.target_loss)
    bar = tqdm(total=n_steps, desc=f"{strategy.name}", unit="step", leave=False, file=sys.stderr,
               disable=None if t.progress else True)
    guard = memory.HostMemoryGuard(int(t.max_host_memory_gb * 2**30) if t.max_host_memory_gb else None)
    try:
        with StepLog(out_dir / STEPS) as log, guard:
            for i, micro in enumerate(train_batches):
                state["step"] = i
                _one_step(i, micro, cfg, trainer, timer, record, step_rows, state, log, host, device)
                if t.eval_every and i and i % t.eval_every == 0:  # untimed: between steps
                    _check_target(record, state, trainer.evaluate(eval_batches), i, t.target_loss)
                bar.update(1)
    except KeyboardInterrupt:
        if guard.tripped_at is None:
            raise
        raise OutOfMemory(state["step"], "host", f"RSS {guard.tripped_at / 2**30:.2f} GiB passed "
                          f"train.max_host_memory_gb={t.max_host_memory_gb}") from None
    except torch.cuda.OutOfMemoryError as e:
        raise OutOfMemory(state["step"], "cuda", str(e).splitlines()[0]) from None
    finally:
        # Whatever happened, keep what was measured up to here.
        bar.close()
        record["time"] = _time_summary(step_rows, tokens_per_step)
        record["time"].update(_target_fields(state))
        record["memory"].update(memory.device_peaks(device))
        record["memory"]["nvml_used_bytes"] = memory.nvml_used_bytes(device)
        record["memory"]["host_peak_rss_bytes"] = host.peak()
        record["memory"]["host_peak_since_reset"] = host.since_reset
        record["time"]["wall_s"] = time.perf_counter() - t_job

    loss_rec["eval_end"] = trainer.evaluate(eval_batches)
    _check_target(record, state, loss_rec["eval_end"], n_steps - 1, t.target_loss)
    record["time"].update(_target_fields(state))
    # After the timed steps, so the microbenchmark cannot disturb them.
    record["calibration"] = calibrate(device, t.precision, t.batch_size * t.seq_len, plan.shape["dim"],
                                      plan.shape["hidden"] or 4 * plan.shape["dim"])
    record["time"]["wall_s"] = time.perf_counter() - t_job
    return record
