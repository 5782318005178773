"""Stacked Neural ODE layers (paper §1.5): piecewise-constant θ(s), θ_i on [s_i, s_{i+1}).

``field.depth=stacked`` makes the chosen linear layers of a field :class:`StackedLinear`.
Options (``field.depth_options``): ``pieces`` p (default 10, equal widths over [0, S]) or
``boundaries``: the interior breakpoints ``[s_1, ..., s_{p-1}]`` (strictly increasing in
(0, S)). Depths below 0 use piece 0, depths at or past the last breakpoint the last piece.

All pieces live in one ``(p, n_params)`` tensor indexed by the piece of s, so the cost of a
call does not grow with p. Each layer exposes ``breakpoints`` (the interior boundaries): the
model builder hands them to adaptive solvers as ``jump_t`` so that no step straddles a jump
(torchdiffeq evaluates just left of a breakpoint when ending a step there, and just right of
it when starting the next, hence the half-open pieces).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from nodex.models.layers import conv2d_from_flat, linear_from_flat

_KEY = "depth_options"  # the layers' argument; builders prefix the config key
OPTIONS = ("pieces", "boundaries")


def stacked_boundaries(options: dict[str, Any] | None, S: float) -> list[float]:
    """Interior breakpoints from ``pieces`` / ``boundaries``.

    Raises:
        ValueError: unknown key, ``pieces < 1``, boundaries not increasing inside (0, S) or
            disagreeing with ``pieces``.
    """
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(f"{_KEY}.{unknown[0]} is not a stacked option; valid: {', '.join(OPTIONS)}")
    pieces, bounds = opts.get("pieces"), opts.get("boundaries")
    if bounds is not None:
        bounds = [float(b) for b in bounds]
        if any(not 0.0 < b < S for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"{_KEY}.boundaries={bounds} must be strictly increasing inside (0, S={S})")
        if pieces is not None and int(pieces) != len(bounds) + 1:
            raise ValueError(
                f"{_KEY}.pieces={pieces} disagrees with {len(bounds)} boundaries ({len(bounds) + 1} pieces); "
                "set one of them"
            )
        return bounds
    p = 10 if pieces is None else pieces
    if int(p) != p or p < 1:
        raise ValueError(f"{_KEY}.pieces={pieces} must be a positive integer")
    return [S * i / int(p) for i in range(1, int(p))]


class PiecewiseParams(nn.Module):
    """p pieces of constant flat parameters in one ``(p, n_params)`` tensor, picked by depth.
    Each piece is initialised by a fresh ``make()`` module (as ``nn.Linear`` / ``nn.Conv2d`` would be)."""

    def __init__(self, boundaries: list[float], make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.breakpoints = tuple(float(b) for b in boundaries)
        self.pieces = len(self.breakpoints) + 1
        self.register_buffer("edges", torch.tensor(self.breakpoints, dtype=torch.float64), persistent=False)
        init = [torch.cat([p.reshape(-1) for p in make().parameters()]) for _ in range(self.pieces)]
        self.coeffs = nn.Parameter(torch.stack(init))  # (p, n_params)

    def piece(self, s: torch.Tensor) -> torch.Tensor:
        """Index of the piece holding depth ``s`` (same shape as ``s``)."""
        return torch.bucketize(s.detach().to(self.edges.dtype), self.edges, right=True)

    def theta(self, s: torch.Tensor) -> torch.Tensor:
        """Flat parameters at depth ``s``: ``(n_params,)`` (0-d s) or ``(B, n_params)``."""
        return self.coeffs[self.piece(s)]


class StackedLinear(PiecewiseParams):
    """Linear layer with p pieces of constant (W_i, b_i). Called as ``layer(s, h)``:
    ``h``: ``(B, in_features)`` -> ``(B, out_features)``; ``s`` 0-d or ``(B,)``.
    Parameters: ``p·(in+1)·out``; each piece initialised like ``nn.Linear``."""

    def __init__(self, in_features: int, out_features: int, boundaries: list[float], bias: bool = True) -> None:
        super().__init__(boundaries, lambda: nn.Linear(in_features, out_features, bias=bias))
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return linear_from_flat(self.theta(s), h, self.out_features, self.in_features, self.has_bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.has_bias}, pieces={self.pieces}"


class StackedConv2d(PiecewiseParams):
    """2-D convolution (same padding) with p pieces of constant kernel and bias. Called as
    ``layer(s, h)``: ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``. Parameters: ``p·(C_in·k²+1)·C_out``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, boundaries: list[float], bias: bool = True
    ) -> None:
        super().__init__(boundaries, lambda: nn.Conv2d(in_channels, out_channels, kernel_size, bias=bias))
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.has_bias = bias

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return conv2d_from_flat(self.theta(s), h, self.out_channels, self.in_channels, k, self.has_bias, 1, k // 2)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.has_bias}, "
            f"pieces={self.pieces}"
        )
