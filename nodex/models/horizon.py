"""Adaptive depth: the ``model.horizon`` slot (paper §1.11).

The integration horizon is learned per sample, ``S(x) = g_ω(x)``. :class:`GeneralNeuralODE` handles
a per-sample horizon exactly by time rescaling: it integrates τ ∈ [0, 1] with
``dz/dτ = S(x)·f(τ·S(x), z, u)``, so ``z(τ=1) = z(S(x))`` for every sample and ``S(x)``
gets its gradient by plain autograd or the adjoint (``S(x)`` is handed to the adjoint as an
extra parameter). The Leibniz rule gives ``dℓ/dS = ∂L/∂z(S)·f(S, z(S)) (+ l(S, z(S)))``,
which ``tests/test_adaptive_depth.py`` checks against autograd.

``kind: learned`` (:class:`LearnedHorizon`):

    S(x) = s_min + (s_max − s_min)·sigmoid(MLP(x))           (B,)

- ``hidden``/``activation``: the MLP ``g_ω`` on the flattened input.
- ``s_min``, ``s_max``: bounds; S(x) stays inside ``(s_min, s_max)`` (reaching them only when
  the sigmoid saturates in floating point).
- ``signed``: allow ``s_min < 0`` (integrate *backward* for some inputs). In 1-D an autonomous
  field with S ≥ 0 cannot map −1 ↦ 1 and 1 ↦ −1 (a 1-D flow is monotone), so the reflection
  experiment uses a signed S (or a depth-varying field).
- ``init``: the initial S(x) for every x (last layer zero, bias set); default ``model.horizon.S``.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from nodex.errors import ConfigError
from nodex.models.build import HORIZONS
from nodex.models.layers import ACTIVATIONS, make_activation


class LearnedHorizon(nn.Module):
    """``g_ω``: ``(B, *input_shape) -> (B,)`` depths in ``(s_min, s_max)``.

    Args:
        in_features: flattened input width.
        hidden: hidden widths of the MLP.
        activation: activation name.
        s_min, s_max: open bounds on S(x).
        init: S(x) at initialisation (strictly inside the bounds).
    """

    def __init__(
        self, in_features: int, *, hidden: list[int], activation: str, s_min: float, s_max: float, init: float
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden, 1]
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            if i < len(widths) - 2:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)
        self.s_min, self.s_max = float(s_min), float(s_max)
        last = layers[-1]
        nn.init.zeros_(last.weight)
        p = (init - self.s_min) / (self.s_max - self.s_min)
        with torch.no_grad():
            last.bias.fill_(math.log(p / (1 - p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.net(x.reshape(x.shape[0], -1))[:, 0]
        return self.s_min + (self.s_max - self.s_min) * torch.sigmoid(raw)

    def extra_repr(self) -> str:
        return f"s_min={self.s_min}, s_max={self.s_max}"


@HORIZONS.register("learned")
def build_learned_horizon(cfg: DictConfig, input_shape: tuple[int, ...], S: float) -> nn.Module:
    signed = cfg.get("signed", False)
    if not isinstance(signed, bool):
        raise ConfigError(f"model.horizon.signed={signed!r} must be true or false")
    s_min = float(cfg.get("s_min", 0.0))
    s_max = float(cfg.get("s_max", 2.0 * S))
    init = float(cfg.get("init") if cfg.get("init") is not None else S)
    if not s_min < s_max:
        raise ConfigError(f"model.horizon.s_min={s_min} must be below model.horizon.s_max={s_max}")
    if s_min < 0 and not signed:
        raise ConfigError(
            f"model.horizon.s_min={s_min} is negative: set model.horizon.signed=true to allow backward integration, "
            "or s_min >= 0"
        )
    if not s_min < init < s_max:
        raise ConfigError(f"model.horizon.init={init} must lie strictly inside (s_min, s_max) = ({s_min}, {s_max})")
    hidden = cfg.get("hidden", [16])
    if hidden is None or any(int(h) <= 0 for h in hidden):
        raise ConfigError(
            f"model.horizon.hidden={hidden} must be a list of positive widths (e.g. [16]; [] for a linear g)"
        )
    activation = cfg.get("activation", "tanh")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"model.horizon.activation={activation!r} is unknown; choose one of: {', '.join(sorted(ACTIVATIONS))}"
        )
    return LearnedHorizon(
        math.prod(input_shape), hidden=[int(h) for h in hidden], activation=activation,
        s_min=s_min, s_max=s_max, init=init,
    )
