"""Where a step's time goes, measured: one untimed step under torch.profiler, split into categories.

Forward work is attributed to the module it ran in: forward hooks open a profiler range per
module (`lb::<category>`), and every operation belongs to its innermost range. Backward work
is attributed through the profiler's forward/backward link: an autograd node's backward event
carries the sequence number of the forward operation that made it. Nothing guesses from
tensor shapes, and nothing in PEFT is edited: its layers are recognised by type.

    base_matmul            the model's own linear layers, frozen or trained
    adapter_matmul         the adapters' low-rank products (A, B)
    adapter_other          the scale, add, dropout and casts an adapter layer adds
                           (lora.impl=fused: one node does an adapted layer's base and adapter
                           products; it marks the base products with an lb::base_matmul range,
                           forward and backward, and the rest of the node is adapter_matmul)
    attention              attention's own work outside its linear layers
    norm_activation_other  norms, activations, embedding, loss, everything else of the model
    compiled               (train.compile) the compiled graphs' forward and backward calls: inside
                           one, base, adapter and the rest are fused and cannot be told apart
    dequantize             (quant.base) a 4-bit base weight made dense for a product, forward and
                           backward: the native layer's lb::dequantize ranges, and any operation
                           named *dequantize* (bitsandbytes' kernels)
    dora_norm              (lora.dora) the weight norm DoRA recomputes every step (native: its
                           lb::dora_norm range; PEFT: its DoRA module's own work, whose A and B
                           products stay adapter_matmul)
    recompute              (train.checkpointing) a checkpointed block's forward run again in backward
    communication          (dist.nproc > 1) collectives and waits on them, where the training
                           thread runs or blocks on them: communication not hidden behind compute
    gradients              accumulating gradients into .grad (one per trainable tensor)
    optimizer              the optimizer step and gradient clipping
    framework              step wall time no operation accounts for (Python, autograd engine, dispatch)
    gpu_idle               (CUDA) step wall time during which no kernel ran

The profiler slows every operation down, so the profiled step is longer than a timed step; its
categories are shares of that step, comparable between configurations measured the same way.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
from torch.autograd.profiler import record_function

CATEGORIES = ("base_matmul", "adapter_matmul", "adapter_other", "attention", "norm_activation_other",
              "dequantize", "dora_norm", "recompute", "compiled", "communication", "gradients", "optimizer",
              "framework")
ADAPTER = ("adapter_matmul", "adapter_other")
REST_TOP = 5  # the largest operations of norm_activation_other kept by name (ms each)
PREFIX = "lb::"
_COMM_PREFIXES = ("c10d::", "gloo:", "nccl:")
_COMM_NAMES = {"record_param_comms", "aten::wait", "torch.distributed.wait"}
_MATMULS = {"aten::linear", "aten::mm", "aten::matmul", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def module_categories(model: nn.Module) -> dict[nn.Module, str]:
    """The range each module opens: adapter layers (native or PEFT), their parts, linears, attention."""
    from bench.models.lora import LoRALinear
    from bench.models.lora_fused import FusedLoRALinear

    peft_layer = _peft_layer_type()
    cats: dict[nn.Module, str] = {}
    for name, m in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if type(m).__name__ == "DoraLinearLayer":  # PEFT's DoRA module: norm and magnitude
            cats[m] = "dora_norm"
        elif isinstance(m, FusedLoRALinear):
            cats[m] = "adapter_matmul"      # one node computes the base and adapter products together
        elif isinstance(m, LoRALinear) or (peft_layer is not None and isinstance(m, peft_layer)):
            cats[m] = "adapter_other"       # what the wrapper adds around its parts
        elif isinstance(m, nn.Linear) and (name.split(".")[-2:-1] in (["lora_A"], ["lora_B"]) or
                                           leaf in ("lora_A", "lora_B")):
            cats[m] = "adapter_matmul"      # PEFT's A and B are nn.Linear children
        elif isinstance(m, nn.Linear):
            cats[m] = "base_matmul"
        elif "attention" in type(m).__name__.lower() or leaf in ("attention", "self_attn", "attn"):
            cats[m] = "attention"
    return cats


def _peft_layer_type():
    # A model holds PEFT's layers only if PEFT was imported to build it: importing it here for a
    # native model cost every profiled job's process a second (PEFT imports transformers).
    if "peft" not in sys.modules:
        return None
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return None
    return LoraLayer


@contextmanager
def module_ranges(model: nn.Module):
    """Forward hooks that open `lb::<category>` around every categorised module's forward."""
    open_ranges: list = []

    def pre(module, args, category):
        rf = record_function(PREFIX + category)
        rf.__enter__()
        open_ranges.append(rf)

    def post(module, args, output):
        open_ranges.pop().__exit__(None, None, None)

    handles = []
    for m, cat in module_categories(model).items():
        handles.append(m.register_forward_pre_hook(lambda mod, a, c=cat: pre(mod, a, c)))
        handles.append(m.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _category(event, forward_of: dict[int, str]) -> str:
    """The category of one top-level operation (its innermost lb:: range, or its forward's)."""
    name = event.name
    if name.startswith(_COMM_PREFIXES) or name in _COMM_NAMES:
        return "communication"
    if "Compiled" in name:  # CompiledFunction, CompiledFunctionBackward, Torch-Compiled Region
        return "compiled"
    if "dequantize" in name:
        return "dequantize"
    if name.startswith("autograd::engine::evaluate_function: "):
        if "AccumulateGrad" in name:
            return "gradients"
        return forward_of.get(event.sequence_nr, "norm_activation_other")
    cat, parent = None, event.cpu_parent
    while parent is not None and cat is None:
        if parent.name.startswith(PREFIX):
            cat = parent.name[len(PREFIX):]
        parent = parent.cpu_parent
    if cat == "optimizer":
        return cat
    if cat in ("adapter_other", "adapter_matmul") and name in _MATMULS:
        return "adapter_matmul"
    if cat == "adapter_other":
        return "adapter_other"
    return cat or "norm_activation_other"


def _ops(events) -> list:
    """Operations that are not inside another operation: their times do not overlap on a thread."""
    out = []
    for e in events:
        if e.name.startswith(PREFIX) or e.device_type != torch.autograd.DeviceType.CPU:
            continue
        parent = e.cpu_parent
        while parent is not None and parent.name.startswith(PREFIX):
            parent = parent.cpu_parent
        if parent is None:
            out.append(e)
    return out


def _inner_ranges(event) -> dict[str, tuple[float, int]]:
    """(microseconds, ranges) of the outermost lb:: ranges inside one top-level operation, by category."""
    out: dict[str, tuple[float, int]] = {}
    todo = list(event.cpu_children)
    while todo:
        d = todo.pop()
        cat = d.name[len(PREFIX):] if d.name.startswith(PREFIX) else "dequantize" if "dequantize" in d.name else None
        if cat in CATEGORIES:
            us, n = out.get(cat, (0.0, 0))
            out[cat] = (us + d.time_range.elapsed_us(), n + 1)
        else:
            todo.extend(d.cpu_children)
    return out


def split(events, wall_ms: float) -> dict:
    """Categories (ms, and the number of operations in each) of one profiled step's events."""
    ops = _ops(events)
    forward_of: dict[int, str] = {}
    for e in ops:
        if e.name.startswith("autograd::"):
            continue
        # The autograd node is made by an operation inside this one (aten::linear -> aten::mm):
        # every sequence number under a forward operation takes that operation's category.
        cat, todo = _category(e, {}), [e]
        while todo:
            d = todo.pop()
            if d.sequence_nr >= 0:
                forward_of.setdefault(d.sequence_nr, cat)
            todo.extend(d.cpu_children)
    ms, count, rest = defaultdict(float), defaultdict(int), defaultdict(float)
    for e in ops:
        cat = _category(e, forward_of)
        if cat == "norm_activation_other":  # "the rest": named by its largest operations
            rest[e.name] += e.time_range.elapsed_us() / 1e3
        inner = _inner_ranges(e)  # parts an operation marked itself (the fused LoRA node's base products)
        for sub, (us, n) in inner.items():
            ms[sub] += us / 1e3
            count[sub] += n
        ms[cat] += (e.time_range.elapsed_us() - sum(us for us, _ in inner.values())) / 1e3
        count[cat] += 1
    cats = {c: ms.get(c, 0.0) for c in CATEGORIES}
    cats["framework"] = max(0.0, wall_ms - sum(v for k, v in cats.items() if k != "framework"))
    top = dict(sorted(rest.items(), key=lambda kv: -kv[1])[:REST_TOP])
    return {"categories": cats, "ops": {c: count.get(c, 0) for c in CATEGORIES if c != "framework"}, "rest_ops": top}


def gpu_idle_ms(kernels: list[tuple[float, float]], start: float, end: float) -> float:
    """Time in [start, end] (us) covered by no kernel interval, in ms: the device waiting for the host."""
    busy, cursor = 0.0, start
    for a, b in sorted(kernels):
        a, b = max(a, cursor), min(b, end)
        if b > a:
            busy += b - a
            cursor = b
    return max(0.0, (end - start) - busy) / 1e3


@contextmanager
def quiet_kineto():
    """The profiler's C++ side prints two `USDT: ... profiler_start/stop` lines to file descriptor 2
    per use, with no setting to stop it (40 of the README sweep's console lines). Its stderr goes to a
    file while it runs; every other line is written back after."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            kept = [ln for ln in f.read().decode(errors="replace").splitlines(True) if not ln.startswith("USDT:")]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def profile_step(step, model: nn.Module, device: torch.device, ranges: bool = True) -> dict:
    """Run `step()` twice under the profiler and attribute the second: the first pays the
    profiler's own start-up (tens of ms on a CPU), which would land in whichever category ran first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    scope = (lambda: module_ranges(model)) if ranges else nullcontext
    with quiet_kineto(), scope(), profile(activities=activities):
        step()
    with quiet_kineto(), scope(), profile(activities=activities) as prof:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3
    events = prof.events()
    out = {"step_ms": wall_ms, **split(events, wall_ms)}
    if device.type == "cuda":
        kernels = [(e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == torch.autograd.DeviceType.CUDA]
        start = min((e.time_range.start for e in _ops(events)), default=0.0)
        out["categories"]["gpu_idle"] = gpu_idle_ms(kernels, start, start + wall_ms * 1e3)
        out["kernels"] = len(kernels)
    return out
