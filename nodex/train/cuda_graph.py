"""CUDA-graph replay of the training step: ``trainer.cuda_graph=true`` (fixed-step solvers on a GPU).

A small model's training step on a GPU is hundreds of tiny kernels, each launched from Python; a
CUDA graph records them once and replays them with one launch. :class:`GraphedStep` runs the
first ``warmup`` steps eagerly on a side stream (CUDA graphs need the lazy initialisation —
cuBLAS handles, optimiser state — done before capture), captures the next step — forward solve,
loss, backward, clipping, optimiser update — into a graph with static input tensors, and from
then on copies each batch into those inputs and replays. Capture records kernels without running
them, so the captured step is then replayed once for its own batch: the sequence of updates is
exactly the eager one.

What makes a step capturable: a fixed number of field evaluations (nodex's fixed-grid euler,
midpoint or rk4 under backprop: its loop has no host sync), no host reads in the model or loss,
a capturable optimiser (Adam/AdamW built with ``capturable=True``) and a constant learning rate
(a float learning rate is baked into the graph). :func:`nodex.train.setup.validate_cuda_graph`
checks the config; a batch of another shape (a short last batch) runs eagerly, and a capture that
still fails (a host read somewhere) logs one warning and the run continues eagerly.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

import torch

log = logging.getLogger("nodex")

StepResult = tuple[torch.Tensor, dict[str, torch.Tensor], Any, int, int]  # loss, parts, out, nfe_f, nfe_b
Step = Callable[[torch.Tensor, torch.Tensor], StepResult]


class GraphBackend(Protocol):
    def eager(self, step: Step, X: torch.Tensor, y: torch.Tensor) -> StepResult: ...
    def capture(self, step: Step, X: torch.Tensor, y: torch.Tensor) -> StepResult: ...
    def replay(self) -> None: ...


class CudaGraphBackend:
    """Eager steps on a side stream, capture into one :class:`torch.cuda.CUDAGraph`, replay."""

    def __init__(self) -> None:
        self.stream = torch.cuda.Stream()
        self.graph: torch.cuda.CUDAGraph | None = None

    def eager(self, step: Step, X: torch.Tensor, y: torch.Tensor) -> StepResult:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            result = step(X, y)
        torch.cuda.current_stream().wait_stream(self.stream)
        return result

    def capture(self, step: Step, X: torch.Tensor, y: torch.Tensor) -> StepResult:
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return step(X, y)

    def replay(self) -> None:
        assert self.graph is not None
        self.graph.replay()


class GraphedStep:
    """``step(X, y)`` eagerly ``warmup`` times, then captured once and replayed.

    Args:
        step: one training step ``(X, y) -> (loss, parts, out, nfe_forward, nfe_backward)``.
        warmup: eager steps before the capture (at least 1).
        backend: how to run, capture and replay (default: CUDA).

    The returned loss and parts are copies (safe to accumulate); ``out`` is the graph's static
    output, valid until the next step. The NFE of a replayed step is the one counted at capture.
    """

    def __init__(self, step: Step, warmup: int = 3, backend: GraphBackend | None = None) -> None:
        self.step = step
        self.warmup = max(1, warmup)
        self.backend = backend if backend is not None else CudaGraphBackend()
        self.calls = 0
        self.static: tuple[torch.Tensor, torch.Tensor, StepResult] | None = None
        self.failure: str | None = None

    @property
    def captured(self) -> bool:
        return self.static is not None

    def __call__(self, X: torch.Tensor, y: torch.Tensor) -> StepResult:
        self.calls += 1
        if self.failure is not None or self.calls <= self.warmup:
            return self.backend.eager(self.step, X, y)
        if self.static is None:
            static_X, static_y = X.clone(), y.clone()
            try:
                result = self.backend.capture(self.step, static_X, static_y)
            except RuntimeError as exc:
                self.failure = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.warning("trainer.cuda_graph: capture failed (%s); continuing without a CUDA graph", self.failure)
                return self.backend.eager(self.step, X, y)
            self.static = (static_X, static_y, result)
        static_X, static_y, (loss, parts, out, nfe_f, nfe_b) = self.static
        if X.shape != static_X.shape or y.shape != static_y.shape:
            return self.backend.eager(self.step, X, y)
        static_X.copy_(X)
        static_y.copy_(y)
        self.backend.replay()
        return loss.clone(), {k: v.clone() for k, v in parts.items()}, out, nfe_f, nfe_b
