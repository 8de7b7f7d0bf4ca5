"""train.cuda_graphs: the whole training step (forward, backward, clipping, AdamW) captured once in
a CUDA graph and replayed, so a step costs one launch instead of one per kernel: the launch
overhead that makes many small adapter kernels slow is what this removes.

PyTorch's whole-network capture recipe: fixed input tensors that each step copies its batch into,
a few warm-up iterations on a side stream (cuBLAS workspaces, autograd's buffers, AdamW's state),
then capture. AdamW runs with capturable=True (its step count on the device) and autocast with
its cast cache off, both as the recipe requires. The capture backend is a parameter, so the
static-input logic is tested on a CPU with a backend that re-runs the step instead of replaying it.
"""
from __future__ import annotations

from typing import Callable

import torch

from bench.measure.timer import StepTimer

WARMUP = 3  # side-stream iterations before capture, as in PyTorch's documentation


class _NoTimer:
    def start(self) -> None: ...

    def mark(self, phase: str) -> None: ...

    def stop(self) -> dict:
        return {}


_NO_TIMER = _NoTimer()


class CudaGraphBackend:
    """Warm up on a side stream, capture, and return the replay."""

    def capture(self, body: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = body()
        return graph.replay, out


class GraphedStep:
    """Replaces Trainer.step for the on-clock steps: copy the batch in, replay, read the loss."""

    def __init__(self, trainer, micro: list[torch.Tensor], backend=None):
        self.trainer = trainer
        self.static = [b.clone() for b in micro]
        self.replay, self.loss = (backend or CudaGraphBackend()).capture(self._body)
        self.updates = WARMUP + 1 if backend is None else getattr(backend, "updates", 1)

    def _body(self) -> torch.Tensor:
        # The trainer's own step, so the captured work is exactly an eager step's; no timer inside
        # (a capture must not synchronize), and the loss stays on the device.
        return self.trainer.step(self.static, _NO_TIMER, defer_loss=True)[0]

    def step(self, micro: list[torch.Tensor], timer: StepTimer, defer_loss: bool = False):
        timer.start()
        for dst, src in zip(self.static, micro):
            dst.copy_(src)
        self.replay()
        timings = timer.stop()  # a replay has no phase borders: the whole step only
        loss = self.loss.clone() if defer_loss else float(self.loss)
        return loss, {"step_ms": timings["step_ms"]}
