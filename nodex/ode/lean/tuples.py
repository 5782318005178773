"""Tuple states for the lean solver: flatten ``(z, q, ...)`` into one tensor and back.

torchdiffeq does the same internally (``_TupleFunc``); the lean dopri5 then runs its few fused
ops on one tensor, and the error norm is the largest RMS over the components (torchdiffeq's
mixed norm), so both take the same steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FlatDynamics(nn.Module):
    """``f(s, (z_1, ..., z_k))`` seen as a function of the flat concatenation of the ``z_i``;
    its parameters are ``dynamics``' (for the adjoint's default parameter list)."""

    def __init__(self, dynamics: nn.Module, shapes: list[torch.Size]) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.shapes = shapes
        self.sizes = [math.prod(shape) for shape in shapes]

    def forward(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        parts = tuple(p.view(shape) for p, shape in zip(y.split(self.sizes), self.shapes))
        return torch.cat([f.reshape(-1) for f in self.dynamics(s, parts)])


def flatten_state(z0: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[torch.Size], list[int]]:
    """``(z_1, ..., z_k)`` -> (flat ``(N,)``, the shapes, the component offsets ``[0, ..., N]``)."""
    shapes = [z.shape for z in z0]
    bounds = [0]
    for z in z0:
        bounds.append(bounds[-1] + z.numel())
    return torch.cat([z.reshape(-1) for z in z0]), shapes, bounds


def unflatten_solution(ys: torch.Tensor, shapes: list[torch.Size]) -> tuple[torch.Tensor, ...]:
    """``(T, N)`` -> ``((T, *shape_1), ..., (T, *shape_k))``."""
    sizes = [math.prod(shape) for shape in shapes]
    return tuple(part.reshape(ys.shape[0], *shape) for part, shape in zip(ys.split(sizes, dim=1), shapes))
