"""The trainer's step: forward, backward and the optimizer update over one step's micro-batches.

`Trainer.step` is the loop body that gets timed; it returns `(loss, timings)`. It knows nothing
of records, counting or warm-up: that is the measurement protocol's (bench/measure/protocol.py).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.profiler import record_function

from bench.config import BenchConfig
from bench.measure import counters
from bench.measure.timer import StepTimer

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def param_groups(model: nn.Module, lr: float, lr_ratio: float, b_params: list[nn.Parameter]) -> list[dict]:
    """AdamW groups; with LoRA+ (lr_ratio != 1), the B matrices learn lr_ratio times faster than A.
    `b_params` comes from the adapter layers themselves (their adapter_params()), not from names."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if lr_ratio == 1.0:
        return [{"params": trainable, "lr": lr}]
    is_b = {id(p) for p in b_params}
    b = [p for p in trainable if id(p) in is_b]
    rest = [p for p in trainable if id(p) not in is_b]
    return [g for g in ({"params": rest, "lr": lr}, {"params": b, "lr": lr * lr_ratio}) if g["params"]]


def _compile_caches(on: bool) -> None:
    """Inductor's on-disk caches (compiled graphs, autograd graphs): on, a second run of the same
    model compiles in a fraction of the time; off (train.compile_cache=false), every job pays a cold
    compile. Both are real costs; the record's compile.cache_hits says which one was measured."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = on
    functorch_config.enable_autograd_cache = on


# train.adamw_impl as AdamW's arguments; default: torch's choice for the device (foreach on CUDA, the loop on a CPU).
IMPL = {"default": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


class Trainer:
    """The model and its optimizer; `step()` is one optimizer step."""

    def __init__(self, model: nn.Module, cfg: BenchConfig, b_params: list[nn.Parameter]):
        t = cfg.train
        self.model = model  # the eager module: counting, evaluation and the profiler's ranges use it
        # torch.compile is lazy: the first step through `run_model` compiles (bench/measure/compiled.py).
        if t.compile:
            # A sweep runs its jobs in one process: without a reset, a job would reuse the graphs an
            # earlier job compiled, and its compile time would read 0.
            torch._dynamo.reset()
            _compile_caches(t.compile_cache)
        self.run_model = torch.compile(model) if t.compile else model
        self.params = [p for p in model.parameters() if p.requires_grad]
        # A captured CUDA graph replays the optimizer too: its step count must live on the device.
        capturable = {"capturable": True} if t.cuda_graphs else {}
        self.optimizer = torch.optim.AdamW(param_groups(model, t.lr, cfg.lora.lr_ratio, b_params),
                                           lr=t.lr, weight_decay=t.weight_decay, **capturable, **IMPL[t.adamw_impl])
        device_type = next(model.parameters()).device.type
        # A captured graph must not replay casts cached from the capture: the cache goes off then.
        self.autocast = (torch.autocast(device_type, dtype=_DTYPES[t.precision], cache_enabled=not t.cuda_graphs)
                         if t.precision in _DTYPES else nullcontext())
        self.scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None
        self.clip = t.grad_clip
        self.foreach: bool | None = None  # clipping's multi-tensor kernels; None: the device's default

    def loss(self, batch: torch.Tensor, eager: bool = False) -> torch.Tensor:
        with self.autocast:
            logits = (self.model if eager else self.run_model)(batch[:, :-1])
            # In fp32, as transformers' ForCausalLMLoss and torchtune upcast the logits: a bf16 model
            # without autocast pays the cast and an fp32 softmax (autocast would cast them to fp32 anyway).
            return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())

    def step(self, micro_batches: list[torch.Tensor], timer: StepTimer, probe=None,
             defer_loss: bool = False, eager: bool = False) -> tuple[float | torch.Tensor, dict]:
        """One optimizer step over `micro_batches`; returns the mean loss and the timer's figures.

        `probe` (the counting step only) gets the saved-tensor context for the first micro-batch
        and the gradient bytes before the optimizer frees them. `defer_loss` returns the loss as
        a device tensor: reading it would synchronize, which a windowed timer must not do per step.
        `eager` runs the uncompiled module (the counting step: counters cannot see inside a graph).
        """
        n = len(micro_batches)
        losses = []
        timer.start()
        for i, batch in enumerate(micro_batches):
            with probe.saved.active() if probe is not None and i == 0 else nullcontext():
                loss = self.loss(batch, eager)
                timer.mark("forward")
            scaled = loss / n if n > 1 else loss
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            timer.mark("backward")
            losses.append(loss)
        if probe is not None:
            probe.grads_bytes = counters.grads_bytes(self.model)
        self._update()
        timer.mark("optimizer")
        timings = timer.stop()
        # Read the loss after the clock stops: .item() would sync inside the step.
        if defer_loss:
            return torch.stack([x.detach().float() for x in losses]).mean(), timings
        return sum(float(x.detach()) for x in losses) / n, timings

    def _update(self) -> None:
        # Under the profiler, a named range lets the attribution file this as optimizer work.
        # Only then: record_function dispatches two operations even with no profiler running,
        # which a timed step and the operation count must not carry.
        if torch.autograd._profiler_enabled():
            with record_function("lb::optimizer"):
                self._optimizer_step()
        else:
            self._optimizer_step()

    def _optimizer_step(self) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=self.foreach)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_losses(self, batches: list[torch.Tensor]) -> list[float]:
        """The held-out loss of each batch, in eval mode (no dropout), no update."""
        self.model.eval()
        losses = [float(self.loss(b, eager=True)) for b in batches]  # no inference graph to compile
        self.model.train()
        return losses

    def evaluate(self, batches: list[torch.Tensor]) -> float:
        losses = self.eval_losses(batches)
        return sum(losses) / len(losses)
