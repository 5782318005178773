"""Input layers ``h_x``: the ``model.input_layer`` slot.

Builders are registered in :data:`INPUT_LAYERS` under ``input_layer.kind`` with the signature
``build(cfg, input_shape) -> (module, state_shape)``; the module maps
``(B, *input_shape) -> (B, *state_shape)``.
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig
from torch import nn

from nodex.registry import Registry

INPUT_LAYERS: Registry[Callable[..., tuple[nn.Module, tuple[int, ...]]]] = Registry("model.input_layer.kind")


@INPUT_LAYERS.register("identity")
def build_identity(cfg: DictConfig, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    return nn.Identity(), tuple(input_shape)
