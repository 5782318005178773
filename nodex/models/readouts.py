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
            f"model.readout.kind=identity needs the state width ({math.prod(state_shape)}) to equal the output width ({n_outputs}); use readout.kind=linear"
        )
    return nn.Flatten() if len(state_shape) > 1 else nn.Identity()
