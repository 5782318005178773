"""Vector fields ``f(s, z, x) -> dz/ds``: the ``model.field`` slot.

A field is called with the depth ``s`` (0-d, or ``(B,)`` per sample), the state ``z`` of
shape ``(B, *state_shape)`` and the control ``x`` (``(B, *control_shape)`` or ``None``), and
returns ``(B, *out_shape)``. Builders are registered in :data:`FIELDS` under ``field.kind``
with the signature ``build(cfg, state_shape, out_shape, control_shape, S) -> nn.Module``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn

from nodex.errors import ConfigError, config_key
from nodex.models.depth import check_depth, chosen_layers, depth_linear
from nodex.models.layers import make_activation
from nodex.registry import Registry

FIELDS: Registry[Callable[..., nn.Module]] = Registry("model.field.kind")


class MLPField(nn.Module):
    """MLP vector field on flat states: ``[z, x] -> hidden... -> out``.

    Shapes: ``z`` ``(B, in_features)``, ``x`` ``(B, *control)`` (flattened to ``control_features``)
    or ``None`` -> ``(B, out_features)``.

    Args:
        in_features: state width ``n_z``.
        out_features: output width (``n_z``, or ``n_z / order`` for higher-order models).
        hidden: hidden widths.
        activation: activation name (see ``ACTIVATIONS``).
        depth: depth kind of the depth-variant layers (see :mod:`nodex.models.depth`).
        depth_layers: indices of the linear layers that use ``depth`` (``None``: all);
            the others are static.
        depth_options: the depth kind's options.
        control_features: width of the control ``x`` concatenated to ``z`` (0: none).
        zero_init_last: zero the last layer so the initial flow is the identity.
        bias: whether the linear layers have biases.
        S: the horizon (Galërkin period and stacked pieces default to ``[0, S]``).
        out_bias: initial value of the last layer's bias (``None``: keep; e.g. ``1.0`` with
            ``zero_init_last``: the initial flow is a translation, see reflection_adaptive_depth).

    Raises:
        ValueError: an unknown activation or depth kind, bad depth options, or ``out_bias``
            without a biased last layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        hidden: list[int],
        activation: str = "tanh",
        depth: str = "none",
        depth_layers: list[int] | None = None,
        depth_options: dict[str, Any] | None = None,
        control_features: int = 0,
        zero_init_last: bool = True,
        bias: bool = True,
        S: float = 1.0,
        out_bias: float | None = None,
    ) -> None:
        super().__init__()
        check_depth(depth)
        widths = [in_features + control_features, *hidden, out_features]
        n_layers = len(widths) - 1
        chosen = chosen_layers(depth_layers, n_layers)
        self.layers = nn.ModuleList(
            depth_linear(depth if i in chosen else "none", widths[i], widths[i + 1], bias=bias, S=S,
                         options=depth_options)
            for i in range(n_layers)
        )
        self.acts = nn.ModuleList(make_activation(activation) for _ in range(n_layers - 1))
        self.control_features = control_features
        if zero_init_last:
            for p in self.layers[-1].parameters():
                nn.init.zeros_(p)
        if out_bias is not None:
            if getattr(self.layers[-1], "bias", None) is None:
                raise ValueError(
                    "out_bias needs a last layer with a bias: set bias=true and a static or concat last layer"
                )
            nn.init.constant_(self.layers[-1].bias, float(out_bias))

    def forward(self, s: torch.Tensor, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        h = z if self.control_features == 0 else torch.cat([z, x.reshape(x.shape[0], -1)], dim=1)
        layers = self.layers
        for i, act in enumerate(self.acts):  # index, not layers[:-1]: slicing builds a new ModuleList per call
            h = act(layers[i](s, h))
        return layers[-1](s, h)


def flat_size(shape: tuple[int, ...] | None) -> int:
    return 0 if shape is None else math.prod(shape)


def mlp_field(cfg: DictConfig, in_features: int, out_features: int, control_features: int, S: float) -> MLPField:
    """The one builder of an :class:`MLPField` from a ``model.field`` node (every MLP key is read here).

    Raises:
        ConfigError: a bad value, naming its ``model.field`` key.
    """
    hidden = list(cfg.get("hidden") or [])
    if any(int(width) <= 0 for width in hidden):
        raise ConfigError(f"model.field.hidden={hidden} must list positive layer widths, e.g. [16, 16] "
                          "([] for no hidden layer)")
    with config_key("model.field"):
        return MLPField(
            in_features,
            out_features,
            hidden=hidden,
            activation=cfg.get("activation", "tanh"),
            depth=cfg.get("depth", "none"),
            depth_layers=None if cfg.get("depth_layers") is None else list(cfg.depth_layers),
            depth_options=dict(cfg.get("depth_options") or {}),
            control_features=control_features,
            zero_init_last=cfg.get("zero_init_last", True),
            bias=cfg.get("bias", True),
            S=S,
            out_bias=cfg.get("out_bias"),
        )


@FIELDS.register("mlp")
def build_mlp_field(
    cfg: DictConfig,
    state_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    control_shape: tuple[int, ...] | None,
    S: float,
) -> nn.Module:
    if len(state_shape) != 1:
        raise ConfigError(
            f"model.field.kind=mlp needs a flat state, got shape {tuple(state_shape)}; use field.kind=conv for images"
        )
    return mlp_field(cfg, state_shape[0], out_shape[0], flat_size(control_shape), S)


class HigherOrderField(nn.Module):
    """n-th order system on ``z = [z_1, ..., z_n]`` (blocks along dim 1):
    ``dz_i/ds = z_{i+1}`` for ``i < n`` and ``dz_n/ds = f(s, z, x)``; ``f`` outputs one block."""

    def __init__(self, field: nn.Module, order: int) -> None:
        super().__init__()
        self.field = field
        self.order = order

    def forward(self, s: torch.Tensor, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        block = z.shape[1] // self.order
        return torch.cat([z[:, block:], self.field(s, z, x)], dim=1)
