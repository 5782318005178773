"""Galërkin layers (paper §1.4): weights that vary with depth, θ(s) = Σ_j α_j ψ_j(s).

``field.depth=galerkin`` makes the chosen linear layers of a field :class:`GalLinear`;
:class:`GalConv2d` is the convolutional counterpart. Options (``field.depth_options``):

- ``basis``: ``fourier`` (integer harmonics over the period T: ``1, cos(2πs/T), sin(2πs/T),
  cos(4πs/T), ...``), ``legendre`` or ``chebyshev`` (polynomials of the depth rescaled from
  ``[0, T]`` to ``[-1, 1]``; evaluated from their monomial coefficients, so any s is valid);
- ``m``: number of basis functions ψ_1..ψ_m (ψ_1 = 1 for every basis);
- ``period``: T (``null``: the horizon S);
- ``dilation`` / ``shift``: learnable s' = a·s + b (init a = 1, b = 0); off: s' = s;
- ``init``: ``zero`` (the paper's), ``normal`` (all α ~ N(0, init_std²)) or ``constant``
  (α_1 as ``nn.Linear``'s default init, the other terms zero: starts as a plain layer).

Speed path: for a 0-d depth, ψ(s) is one ``(m,)`` vector and θ(s) = ψ(s) @ α is one small
matmul with the ``(m, n_params)`` coefficient matrix per layer call, shared by the whole
batch; per-sample depths ``(B,)`` (adaptive horizons) give ``(B, n_params)`` and a batched
matmul. Differences to torchdyn's GalLinear: integer harmonics with 2π (no dead sin(0) term),
``m`` counts basis functions (not frequencies × 2), depth passed explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nodex.models.layers import conv2d_from_flat, linear_from_flat

BASES = ("fourier", "legendre", "chebyshev")
INITS = ("zero", "normal", "constant")
_KEY = "depth_options"  # the layers' argument; builders prefix the config key


@dataclass(frozen=True)
class GalerkinSpec:
    """Validated Galërkin options (see the module docstring)."""

    basis: str = "fourier"
    m: int = 5
    period: float = 1.0
    dilation: bool = False
    shift: bool = False
    init: str = "constant"
    init_std: float = 0.1

    @classmethod
    def from_options(cls, options: dict[str, Any] | None, S: float) -> "GalerkinSpec":
        """Build from ``field.depth_options``; ``period`` defaults to the horizon ``S``.

        Raises:
            ValueError: unknown key, basis or init; ``m < 1``; non-positive period.
        """
        opts = dict(options or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(f"{_KEY}.{unknown[0]} is not a galerkin option; valid: {', '.join(sorted(known))}")
        if opts.get("period") is None:
            opts["period"] = float(S)
        spec = cls(**opts)
        if spec.basis not in BASES:
            raise ValueError(f"{_KEY}.basis={spec.basis!r} is unknown; choose one of: {', '.join(BASES)}")
        if spec.init not in INITS:
            raise ValueError(f"{_KEY}.init={spec.init!r} is unknown; choose one of: {', '.join(INITS)}")
        if int(spec.m) != spec.m or spec.m < 1:
            raise ValueError(f"{_KEY}.m={spec.m} (number of basis functions) must be a positive integer")
        if not float(spec.period) > 0:
            raise ValueError(f"{_KEY}.period={spec.period} must be positive (or null for the horizon S)")
        return spec


def _polynomial_coefficients(kind: str, m: int) -> torch.Tensor:
    """``(m, m)`` matrix C with P_j(x) = Σ_k C[j, k] x^k (Legendre or Chebyshev, first kind)."""
    C = torch.zeros(m, m, dtype=torch.float64)
    C[0, 0] = 1.0
    if m > 1:
        C[1, 1] = 1.0
    for n in range(1, m - 1):
        shifted = torch.roll(C[n], 1)  # x·P_n
        shifted[0] = 0.0
        if kind == "legendre":  # (n+1) P_{n+1} = (2n+1) x P_n - n P_{n-1}
            C[n + 1] = ((2 * n + 1) * shifted - n * C[n - 1]) / (n + 1)
        else:  # T_{n+1} = 2x T_n - T_{n-1}
            C[n + 1] = 2 * shifted - C[n - 1]
    return C


class DepthBasis(nn.Module):
    """ψ(s): ``(m,)`` for a 0-d depth, ``(B, m)`` for per-sample depths ``(B,)``."""

    def __init__(self, spec: GalerkinSpec) -> None:
        super().__init__()
        self.kind, self.m, self.period = spec.basis, int(spec.m), float(spec.period)
        self.dilation = nn.Parameter(torch.ones(())) if spec.dilation else None
        self.shift = nn.Parameter(torch.zeros(())) if spec.shift else None
        j = torch.arange(self.m)
        if self.kind == "fourier":
            k = torch.div(j + 1, 2, rounding_mode="floor").double()  # 0, 1, 1, 2, 2, ...
            self.register_buffer("freq", (2 * math.pi / self.period * k).float())
            # sin x = cos(x - π/2): one cos (after one fused multiply-add) for the whole vector.
            self.register_buffer("neg_phase", -torch.where(j % 2 == 1, 0.0, math.pi / 2).float() * (j > 0))
        else:
            self.register_buffer("powers", j.float())
            self.register_buffer("minus_one", torch.tensor(-1.0))
            self.register_buffer("coeffs_T", _polynomial_coefficients(self.kind, self.m).T.contiguous().float())

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.dilation is not None:
            s = self.dilation * s
        if self.shift is not None:
            s = s + self.shift
        if s.dim() == 1:
            s = s[:, None]
        if self.kind == "fourier":
            return torch.cos(torch.addcmul(self.neg_phase, s, self.freq))
        x = torch.add(self.minus_one, s, alpha=2.0 / self.period)  # [0, T] -> [-1, 1]
        return torch.pow(x, self.powers) @ self.coeffs_T


class _GalerkinParams(nn.Module):
    """θ(s) = ψ(s) @ α with α: ``(m, n_params)``; ``n_params`` split by the subclass."""

    def __init__(self, spec: GalerkinSpec, n_params: int) -> None:
        super().__init__()
        self.spec = spec
        self.basis = DepthBasis(spec)
        self.coeffs = nn.Parameter(torch.zeros(spec.m, n_params))

    def _init_coeffs(self, plain: nn.Module) -> None:
        """Fill α per ``spec.init``; ``plain`` is a freshly initialised static layer."""
        with torch.no_grad():
            self.coeffs.zero_()
            if self.spec.init == "normal":
                self.coeffs.normal_(0.0, float(self.spec.init_std))
            elif self.spec.init == "constant":
                self.coeffs[0] = torch.cat([p.reshape(-1) for p in plain.parameters()])

    def theta(self, s: torch.Tensor) -> torch.Tensor:
        """Flat parameters at depth ``s``: ``(n_params,)`` (0-d s) or ``(B, n_params)``."""
        if s.dtype != self.coeffs.dtype:
            s = s.to(self.coeffs.dtype)
        return self.basis(s) @ self.coeffs


class GalLinear(_GalerkinParams):
    """Linear layer with W(s), b(s) on a Galërkin basis. Called as ``layer(s, h)``:
    ``h``: ``(B, in_features)`` -> ``(B, out_features)``. Parameters: ``m·(in+1)·out``
    (``m·in·out`` without bias), plus 1 each for a learnable dilation / shift."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, spec: GalerkinSpec | None = None
    ) -> None:
        spec = spec or GalerkinSpec()
        self.in_features, self.out_features, self.n_weight = in_features, out_features, in_features * out_features
        super().__init__(spec, self.n_weight + (out_features if bias else 0))
        self.has_bias = bias
        self._init_coeffs(nn.Linear(in_features, out_features, bias=bias))

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return linear_from_flat(self.theta(s), h, self.out_features, self.in_features, self.has_bias)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, bias={self.has_bias}, basis={self.spec.basis}, m={self.spec.m}"
        )


class GalConv2d(_GalerkinParams):
    """2-D convolution with kernel and bias on a Galërkin basis. Called as ``layer(s, h)``:
    ``h``: ``(B, C_in, H, W)`` -> ``(B, C_out, H', W')``. Per-sample depths ``(B,)`` use one
    grouped convolution (groups = B). Parameters: ``m·(C_in·k²+1)·C_out`` (+ dilation/shift)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = True,
        spec: GalerkinSpec | None = None,
    ) -> None:
        spec = spec or GalerkinSpec()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.n_weight = out_channels * in_channels * kernel_size * kernel_size
        super().__init__(spec, self.n_weight + (out_channels if bias else 0))
        self.has_bias = bias
        self._init_coeffs(nn.Conv2d(in_channels, out_channels, kernel_size, bias=bias))

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return conv2d_from_flat(
            self.theta(s), h, self.out_channels, self.in_channels, self.kernel_size, self.has_bias, self.stride,
            self.padding,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, basis={self.spec.basis}, "
            f"m={self.spec.m}"
        )
