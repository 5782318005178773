"""Integral losses l(s, z, u, f) for ``loss = L(ŷ(S)) + ∫_0^S l ds`` (paper §1.10).

The ``model.integral_loss`` slot. A loss module is called with the depth ``s`` (0-d, or ``(B,)``
per sample), the state ``z`` ``(B, *state_shape)``, the control ``u`` (or ``None``) and the
field's value ``f = f(s, z, u)`` (same shape as ``z``), and returns ``(B,)``. It rides as an
extra state of the solve (see :mod:`nodex.models.neural_ode`), so autograd and the adjoint
both give its value and its full gradient, including the gradient with respect to the
loss's own parameters (a learnable reference, say).

Kinds (``model.integral_loss.kind``):

- ``tracking``: ``weight · mean_i (z_i(s) - γ_i(s))²`` over the tracked coordinates ``coords``
  (default: the first ``d`` of the state), with γ from ``reference`` (see :func:`build_reference`);
- ``kinetic``: ``weight · ‖f(s, z)‖²`` (kinetic-energy regulariser);
- ``l1`` / ``l2``: ``weight · Σ|z|`` / ``weight · Σ z²`` of the state.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nodex.errors import ConfigError, config_key
from nodex.models.build import INTEGRAL_LOSSES

_KEY = "model.integral_loss"


def _options(cfg: DictConfig | dict | None, allowed: set[str], key: str) -> dict[str, Any]:
    opts = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    unknown = sorted(set(opts) - allowed - {"kind"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]} is not an option here; valid: {', '.join(sorted(allowed | {'kind'}))}")
    return opts


class CircleReference(nn.Module):
    """γ(s) = center + radius·[cos(2πs/period + phase), sin(2πs/period + phase)].

    ``learnable``: radius and phase become parameters (a loss with its own parameters).
    Called with depths of any shape ``(...)`` -> ``(..., 2)``.

    Raises:
        ValueError: a non-positive ``period`` or a ``center`` without 2 entries.
    """

    dim = 2

    def __init__(
        self, radius: float = 1.0, period: float = 1.0, phase: float = 0.0,
        center: tuple[float, float] = (0.0, 0.0), learnable: bool = False,
    ) -> None:
        super().__init__()
        if not float(period) > 0:
            raise ValueError(f"period={period} must be positive")
        if len(center) != 2:
            raise ValueError(f"center={list(center)} must have 2 entries")
        self.omega = 2 * math.pi / float(period)
        radius_t, phase_t = torch.tensor(float(radius)), torch.tensor(float(phase))
        if learnable:
            self.radius, self.phase = nn.Parameter(radius_t), nn.Parameter(phase_t)
        else:
            self.register_buffer("radius", radius_t)
            self.register_buffer("phase", phase_t)
        self.register_buffer("center", torch.tensor([float(c) for c in center]))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        angle = self.omega * s.to(self.center) + self.phase
        return self.center + self.radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)


REFERENCES: dict[str, Callable[..., nn.Module]] = {"circle": CircleReference}


def build_reference(cfg: DictConfig | dict | None, key: str = f"{_KEY}.reference") -> nn.Module:
    """A reference signal γ from ``{kind: circle, radius, period, phase, center, learnable}``.

    Raises:
        ConfigError: unknown kind or option.
    """
    opts = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    kind = opts.pop("kind", "circle")
    if kind not in REFERENCES:
        raise ConfigError(f"{key}.kind={kind!r} is unknown; choose one of: {', '.join(sorted(REFERENCES))}")
    try:
        with config_key(key):
            return REFERENCES[kind](**opts)
    except TypeError as exc:
        raise ConfigError(f"{key} has an invalid option for kind={kind} ({exc})") from None


def tracked_coords(coords: list[int] | None, dim: int, state_shape: tuple[int, ...], key: str) -> list[int]:
    """Validated indices of the flat state that follow a ``dim``-dimensional reference."""
    n = math.prod(state_shape)
    coords = list(range(dim)) if coords is None else [int(c) for c in coords]
    if len(coords) != dim or any(not 0 <= c < n for c in coords):
        raise ConfigError(
            f"{key}.coords={coords} must list {dim} state indices in [0, {n}) (the reference is {dim}-dimensional)"
        )
    return coords


class TrackingLoss(nn.Module):
    """``l = weight · mean((z[:, coords] - γ(s))²)`` over the tracked coordinates -> ``(B,)``."""

    def __init__(self, reference: nn.Module, coords: list[int], weight: float = 1.0) -> None:
        super().__init__()
        self.reference = reference
        self.weight = float(weight)
        self.register_buffer("coords", torch.tensor(coords, dtype=torch.long), persistent=False)

    def forward(
        self, s: torch.Tensor, z: torch.Tensor, u: torch.Tensor | None = None, f: torch.Tensor | None = None
    ) -> torch.Tensor:
        target = self.reference(s)  # (d,) or (B, d)
        err = z.reshape(z.shape[0], -1).index_select(1, self.coords) - target
        return self.weight * err.pow(2).mean(dim=1)


class NormLoss(nn.Module):
    """``weight · Σ|v|^p`` per sample (p = 1 or 2) of the state (``on='state'``) or of the
    field's value (``on='field'``: p = 2 is the kinetic energy ‖f‖²) -> ``(B,)``."""

    def __init__(self, p: int, on: str, weight: float = 1.0) -> None:
        super().__init__()
        self.p, self.on, self.weight = p, on, float(weight)

    def forward(
        self, s: torch.Tensor, z: torch.Tensor, u: torch.Tensor | None = None, f: torch.Tensor | None = None
    ) -> torch.Tensor:
        v = z if self.on == "state" else f
        if v is None:
            raise ValueError("this integral loss needs the field's value f")
        v = v.reshape(v.shape[0], -1)
        return self.weight * (v.abs().sum(1) if self.p == 1 else v.pow(2).sum(1))

    def extra_repr(self) -> str:
        return f"p={self.p}, on={self.on}, weight={self.weight}"


@INTEGRAL_LOSSES.register("tracking")
def build_tracking(cfg: DictConfig, state_shape: tuple[int, ...], S: float) -> nn.Module:
    opts = _options(cfg, {"reference", "coords", "weight"}, _KEY)
    reference = build_reference(opts.get("reference"))
    coords = tracked_coords(opts.get("coords"), reference.dim, tuple(state_shape), _KEY)
    return TrackingLoss(reference, coords, opts.get("weight", 1.0))


@INTEGRAL_LOSSES.register("kinetic")
def build_kinetic(cfg: DictConfig, state_shape: tuple[int, ...], S: float) -> nn.Module:
    return NormLoss(2, "field", _options(cfg, {"weight"}, _KEY).get("weight", 1.0))


@INTEGRAL_LOSSES.register("l1")
def build_l1(cfg: DictConfig, state_shape: tuple[int, ...], S: float) -> nn.Module:
    return NormLoss(1, "state", _options(cfg, {"weight"}, _KEY).get("weight", 1.0))


@INTEGRAL_LOSSES.register("l2")
def build_l2(cfg: DictConfig, state_shape: tuple[int, ...], S: float) -> nn.Module:
    return NormLoss(2, "state", _options(cfg, {"weight"}, _KEY).get("weight", 1.0))
