"""Input layers ``h_x``: the ``model.input_layer`` slot (paper §1.6–1.8).

Builders are registered in :data:`INPUT_LAYERS` under ``input_layer.kind`` with the signature
``build(cfg, input_shape) -> (module, state_shape)``; the module maps
``(B, *input_shape) -> (B, *state_shape)``. Augmentation acts on dim 1: features for flat
inputs ``(B, d)``, channels for images ``(B, C, H, W)``.

Kinds:

- ``identity``      z(0) = x                                         (vanilla, n_z = n_x)
- ``zero_augment``  z(0) = [0; x] or [x; 0] with ``n_a`` zeros       (ANODE, ``position: first|last``)
- ``linear``        z(0) = W x (+ b), ``width`` features             (IL-NODE, flat inputs)
- ``conv``          z(0) = Conv_kxk(x), ``width`` channels           (IL-NODE, images)
- ``partial``       z(0) = [h(x); x] (or [x; h(x)]), h linear/conv with ``n_a`` outputs (partial IL)

Initial state of higher-order models (``order_init``, any kind; ``order`` is the model's order,
``${..order}`` in the presets): the layer's output ``h`` is then *one block* of the n-block state

- ``state``     (default) ``h`` is the whole state ``[z_1, ..., z_n]``;
- ``position``  ``z_1 = h``, the other blocks zero (velocity starts at 0);
- ``velocity``  ``z_2 = h``, the other blocks zero: the paper's CIFAR second-order model
  (Conv3x3(3→21) then 21 zero channels prepended: position 0, velocity h_x(x)).
"""

from __future__ import annotations

from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from nodex.errors import ConfigError
from nodex.registry import Registry

INPUT_LAYERS: Registry[Callable[..., tuple[nn.Module, tuple[int, ...]]]] = Registry("model.input_layer.kind")

POSITIONS = ("first", "last")
ORDER_INITS = ("state", "position", "velocity")


class ZeroAugment(nn.Module):
    """Concatenate ``n_a`` zero channels/features along dim 1, before (``first``, torchdyn's
    default, [0; x]) or after (``last``, [x; 0]) the input."""

    def __init__(self, n_a: int, position: str = "first") -> None:
        super().__init__()
        self.n_a = n_a
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros(x.shape[0], self.n_a, *x.shape[2:])
        return torch.cat([zeros, x] if self.position == "first" else [x, zeros], dim=1)

    def extra_repr(self) -> str:
        return f"n_a={self.n_a}, position={self.position}"


class PartialAugment(nn.Module):
    """The paper's partial input layer: ``[h(x); x]`` (``first``) or ``[x; h(x)]`` (``last``)."""

    def __init__(self, layer: nn.Module, position: str = "first") -> None:
        super().__init__()
        self.layer = layer
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x)
        return torch.cat([h, x] if self.position == "first" else [x, h], dim=1)


class BlockInit(nn.Module):
    """Place ``inner(x)`` as block ``block`` of an ``order``-block state; the others are zero."""

    def __init__(self, inner: nn.Module, order: int, block: int) -> None:
        super().__init__()
        self.inner = inner
        self.order = order
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inner(x)
        zeros = torch.zeros_like(h)
        return torch.cat([h if i == self.block else zeros for i in range(self.order)], dim=1)

    def extra_repr(self) -> str:
        return f"order={self.order}, block={self.block}"


def _position(cfg: DictConfig) -> str:
    position = cfg.get("position", "first")
    if position not in POSITIONS:
        raise ConfigError(f"model.input_layer.position={position!r} is unknown; choose one of: {', '.join(POSITIONS)}")
    return position


def _positive(cfg: DictConfig, key: str) -> int:
    value = cfg.get(key)
    if value is None or int(value) <= 0:
        raise ConfigError(
            f"model.input_layer.{key}={value} must be a positive integer (model.input_layer.kind={cfg.kind})"
        )
    return int(value)


def _order_init(cfg: DictConfig, module: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """Apply ``order_init`` (see the module docstring) to a built layer and its output shape."""
    mode = cfg.get("order_init", "state")
    if mode not in ORDER_INITS:
        raise ConfigError(f"model.input_layer.order_init={mode!r} is unknown; choose one of: {', '.join(ORDER_INITS)}")
    if mode == "state":
        return module, shape
    order = int(cfg.get("order", 1))
    if order < 2:
        raise ConfigError(
            f"model.input_layer.order_init={mode} places h_x(x) in one block of a higher-order state, "
            f"but model.order={order}; set model.order>=2 (and input_layer.order: ${{..order}}) or order_init=state"
        )
    block = 0 if mode == "position" else 1
    return BlockInit(module, order, block), (shape[0] * order, *shape[1:])


def _lifting_layer(cfg: DictConfig, input_shape: tuple[int, ...], width: int, key: str) -> nn.Module:
    """A linear layer for flat inputs, a ``kernel_size`` conv (same padding) for images."""
    bias = bool(cfg.get("bias", True))
    if len(input_shape) == 1:
        return nn.Linear(input_shape[0], width, bias=bias)
    if len(input_shape) == 3:
        k = int(cfg.get("kernel_size", 3))
        if k < 1 or k % 2 == 0:
            raise ConfigError(
                f"model.input_layer.kernel_size={k} must be a positive odd integer (same padding keeps H×W)"
            )
        return nn.Conv2d(input_shape[0], width, k, padding=k // 2, bias=bias)
    raise ConfigError(f"model.input_layer.kind={key} needs inputs of shape (d,) or (C, H, W), got {tuple(input_shape)}")


@INPUT_LAYERS.register("identity")
def build_identity(cfg: DictConfig, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    return _order_init(cfg, nn.Identity(), tuple(input_shape))


@INPUT_LAYERS.register("zero_augment")
def build_zero_augment(cfg: DictConfig, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """ANODE: ``n_a`` zero channels at ``position`` (``first``: [0; x], ``last``: [x; 0])."""
    n_a = _positive(cfg, "n_a")
    shape = (input_shape[0] + n_a, *input_shape[1:])
    return _order_init(cfg, ZeroAugment(n_a, _position(cfg)), shape)


@INPUT_LAYERS.register("linear")
def build_linear(cfg: DictConfig, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """IL-NODE for flat inputs: ``Linear(d, width, bias)``."""
    if len(input_shape) != 1:
        raise ConfigError(
            f"model.input_layer.kind=linear needs flat inputs, got shape {tuple(input_shape)}; use "
            "input_layer.kind=conv for images"
        )
    width = _positive(cfg, "width")
    return _order_init(cfg, _lifting_layer(cfg, input_shape, width, "linear"), (width,))


@INPUT_LAYERS.register("conv")
def build_conv(cfg: DictConfig, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """IL-NODE for images: ``Conv2d(C, width, kernel_size, padding=same, bias)``."""
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.input_layer.kind=conv needs image inputs (C, H, W), got shape {tuple(input_shape)}; use "
            "input_layer.kind=linear for vectors"
        )
    width = _positive(cfg, "width")
    return _order_init(cfg, _lifting_layer(cfg, input_shape, width, "conv"), (width, *input_shape[1:]))


@INPUT_LAYERS.register("partial")
def build_partial(cfg: DictConfig, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """Partial IL: ``[h(x); x]`` with ``h`` linear (vectors) or conv (images) of ``n_a`` outputs."""
    n_a = _positive(cfg, "n_a")
    layer = PartialAugment(_lifting_layer(cfg, input_shape, n_a, "partial"), _position(cfg))
    return _order_init(cfg, layer, (input_shape[0] + n_a, *input_shape[1:]))
