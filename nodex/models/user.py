"""A user's own slot modules (``_target_`` options of ``model/field``, ``model/input_layer``, ``model/readout``).

Contracts (what nodex passes besides the YAML's keys, each only where the signature takes it):

- field: ``dim`` (the state's width: features of a flat state, channels of an image state), ``out_dim`` (the
  output's: ``dim / model.order``), ``state_shape``, ``S``; ``forward(z)``, ``forward(s, z)`` or, with data control,
  ``forward(s, z, u)`` returns dz/ds of ``z``'s shape ``(B, *state_shape)`` (one block for ``model.order > 1``).
- input layer: ``dim`` (the input's width or channels), ``input_shape``; ``forward(x)`` -> the initial state
  ``(B, *state_shape)`` (its shape is read off one call).
- readout: ``dim`` (the state's width), ``state_shape``, ``n_outputs``; ``forward(z)`` -> ``(B, n_outputs)``.

A target may be a class or a function that returns the module; a plain function ``f(z)`` / ``f(s, z)`` with no
parameters of its own is a field too.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn

from nodex.errors import ConfigError
from nodex.node import required_arguments
from nodex.targets import call_target


class TargetField(nn.Module):
    """A user's field ``f`` in nodex's ``(s, z, u)`` calling convention.

    Shapes: ``s`` 0-d or ``(B,)``; ``z`` ``(B, *state_shape)``; ``u`` the control or ``None`` -> ``f``'s output.
    """

    def __init__(self, f: Callable[..., torch.Tensor], arity: int) -> None:
        super().__init__()
        self.f = f  # an nn.Module registers as a submodule (its parameters train); a function stays a function
        self.arity = arity

    def forward(self, s: torch.Tensor, z: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        if self.arity == 1:
            return self.f(z)
        if self.arity == 2:
            return self.f(s, z)
        return self.f(s, z, u)


def _module(obj: Any, key: str) -> Any:
    if isinstance(obj, nn.Module) or callable(obj):
        return obj
    raise ConfigError(f"{key}._target_ returned a {type(obj).__name__}; it must build an nn.Module (or a function)")


def build_target_field(cfg: DictConfig, state_shape: tuple[int, ...], out_shape: tuple[int, ...],
                       control_shape: tuple[int, ...] | None, S: float) -> nn.Module:
    """The field ``cfg._target_`` wrapped as :class:`TargetField` (see the module docstring for the contract).

    Raises:
        ConfigError: it cannot be built, or its ``forward`` does not take ``(z)``, ``(s, z)`` or ``(s, z, u)``.
    """
    f = _module(call_target(cfg, "model.field", {"dim": int(state_shape[0]), "out_dim": int(out_shape[0]),
                                                  "state_shape": tuple(state_shape), "S": S}), "model.field")
    try:
        arity, _ = required_arguments(f)
    except TypeError as exc:
        raise ConfigError(f"model.field: {cfg._target_}: {exc}") from None
    if arity not in (1, 2, 3) or (arity == 3) != (control_shape is not None):
        wanted = "forward(s, z, u) (this model has a control u)" if control_shape is not None else \
            "forward(z) or forward(s, z)"
        raise ConfigError(f"model.field: {cfg._target_} takes {arity} positional arguments; a field's must be "
                          f"{wanted}, returning dz/ds")
    return TargetField(f, arity)


def build_target_input_layer(cfg: DictConfig, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """The input layer ``cfg._target_`` and the state shape it makes (read off one call on zeros)."""
    layer = _module(call_target(cfg, "model.input_layer", {"dim": int(input_shape[0]),
                                                            "input_shape": tuple(input_shape)}), "model.input_layer")
    with torch.no_grad():
        probe = torch.zeros(2, *input_shape, dtype=_dtype_of(layer))
        state_shape = tuple(layer(probe).shape[1:])
    return layer, state_shape


def build_target_readout(cfg: DictConfig, state_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """The readout ``cfg._target_``: ``(B, *state_shape) -> (B, n_outputs)``."""
    return _module(call_target(cfg, "model.readout", {"dim": int(state_shape[0]), "state_shape": tuple(state_shape),
                                                      "n_outputs": int(n_outputs)}), "model.readout")


def _dtype_of(module: Any) -> torch.dtype:
    params = list(module.parameters()) if isinstance(module, nn.Module) else []
    return params[0].dtype if params else torch.get_default_dtype()
