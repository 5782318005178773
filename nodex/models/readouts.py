"""Readouts ``h_y``: the ``model.readout`` slot.

Builders are registered in :data:`READOUTS` under ``readout.kind`` with the signature
``build(cfg, state_shape, n_outputs) -> nn.Module`` mapping ``(B, *state_shape) -> (B, n_outputs)``.
"""

from __future__ import annotations

import math
from typing import Callable

from omegaconf import DictConfig
from torch import nn

from nodex.errors import ConfigError
from nodex.registry import Registry

READOUTS: Registry[Callable[..., nn.Module]] = Registry("model.readout.kind")


@READOUTS.register("linear")
def build_linear(cfg: DictConfig, state_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    width = math.prod(state_shape)
    layer = nn.Linear(width, n_outputs, bias=cfg.get("bias", True))
    return layer if len(state_shape) == 1 else nn.Sequential(nn.Flatten(), layer)


@READOUTS.register("identity")
def build_identity(cfg: DictConfig, state_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    if math.prod(state_shape) != n_outputs:
        raise ConfigError(
            f"model.readout.kind=identity needs the state width ({math.prod(state_shape)}) to equal the output width "
            f"({n_outputs}); use readout.kind=linear"
        )
    return nn.Flatten() if len(state_shape) > 1 else nn.Identity()


@READOUTS.register("conv_head")
def build_conv_head(cfg: DictConfig, state_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """The paper's image readout (§E5): ``Conv1x1(n_z→k) → AdaptiveAvgPool2d(p) → Flatten →
    Linear(p²·k, n_outputs)`` with ``k = readout.channels``, ``p = readout.pool`` (4)."""
    if len(state_shape) != 3:
        raise ConfigError(
            f"model.readout.kind=conv_head needs an image state (C, H, W), got shape {tuple(state_shape)}; use "
            "readout.kind=linear"
        )
    k, pool = int(cfg.get("channels", 4)), int(cfg.get("pool", 4))
    if k <= 0 or pool <= 0:
        raise ConfigError(f"model.readout.channels={k} and model.readout.pool={pool} must be positive integers")
    return nn.Sequential(
        nn.Conv2d(state_shape[0], k, 1),
        nn.AdaptiveAvgPool2d(pool),
        nn.Flatten(),
        nn.Linear(pool * pool * k, n_outputs, bias=cfg.get("bias", True)),
    )
