"""Tuple states for the lean solver: flatten ``(z, q, ...)`` into one tensor and back (or, for K members, into
``(K, M)`` rows: :func:`flatten_members`).

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


class MemberFlatDynamics(nn.Module):
    """``f(s, z)`` of a state whose every part leads with ``K`` members (a tensor or a tuple), seen as a function of
    ``(K, M)`` rows, row ``k`` the concatenation of member ``k``'s flattened parts; ``s``: ``(K,)``. Its parameters
    are ``dynamics``'."""

    def __init__(self, dynamics: nn.Module, shapes: list[torch.Size], is_tuple: bool) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.shapes, self.is_tuple = shapes, is_tuple
        self.sizes = [math.prod(shape[1:]) for shape in shapes]
        self.takes_member_rows = bool(getattr(dynamics, "takes_member_rows", False))

    def forward(self, s: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``rows`` (where ``dynamics`` takes them): the members ``y`` holds, passed on."""
        if self.is_tuple:
            state = tuple(p.reshape(y.shape[0], *shape[1:]) for p, shape in zip(y.split(self.sizes, dim=1), self.shapes))
        else:
            state = y.reshape(y.shape[0], *self.shapes[0][1:])
        out = self.dynamics(s, state) if rows is None else self.dynamics(s, state, rows)
        if not self.is_tuple:
            return out.reshape(y.shape)
        return torch.cat([f.reshape(y.shape[0], -1) for f in out], dim=1)


def flatten_members(z0: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, list[torch.Size], list[int]]:
    """``(K, ...)`` or a tuple of such -> (``(K, M)`` rows, the parts' shapes, the parts' offsets in a row)."""
    parts = z0 if isinstance(z0, tuple) else (z0,)
    K = parts[0].shape[0]
    bounds = [0]
    for z in parts:
        bounds.append(bounds[-1] + z[0].numel())
    flat = parts[0].reshape(K, -1) if len(parts) == 1 else torch.cat([z.reshape(K, -1) for z in parts], dim=1)
    return flat, [z.shape for z in parts], bounds


def unflatten_members(ys: torch.Tensor, shapes: list[torch.Size], is_tuple: bool
                      ) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``(T, K, M)`` -> ``(T, K, ...)`` (a tuple of such for a tuple state)."""
    sizes = [math.prod(shape[1:]) for shape in shapes]
    parts = tuple(p.reshape(ys.shape[0], *shape) for p, shape in zip(ys.split(sizes, dim=2), shapes))
    return parts if is_tuple else parts[0]
