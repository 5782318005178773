"""A user's own slot modules (``_target_`` options of ``model/field``, ``model/input_layer``, ``model/readout``).

Contracts (what nodex passes besides the YAML's keys, each only where the signature takes it):

- field: ``dim`` (the state's width: features of a flat state, channels of an image state), ``out_dim`` (the
  output's: ``dim / model.order``), ``state_shape``, ``S``; ``forward(z)``, ``forward(s, z)`` or, with data control,
  ``forward(s, z, u)`` returns dz/ds of ``z``'s shape ``(B, *state_shape)`` (one block for ``model.order > 1``).
- input layer: ``dim`` (the input's width or channels), ``input_shape``; ``forward(x)`` -> the initial state
  ``(B, *state_shape)`` (its shape is read off one call).
- readout: ``dim`` (the state's width), ``state_shape``, ``n_outputs``; ``forward(z)`` -> ``(B, n_outputs)``.

A target may be a class or a function that returns the module; a plain function ``f(z)`` / ``f(s, z)`` with no
parameters of its own is a field too (given as it is, or with ``_partial_: true`` and keyword arguments from the YAML).
A field whose output is not a tensor of the state's shape, and a readout whose output is not ``(B, n_outputs)``, are
refused in one line (nothing broadcasts silently).
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

    def __init__(self, f: Callable[..., torch.Tensor], arity: int, out_shape: tuple[int, ...] | None = None,
                 label: str = "model.field") -> None:
        super().__init__()
        self.f = f  # an nn.Module registers as a submodule (its parameters train); a function stays a function
        self.arity = arity
        self.out_shape = None if out_shape is None else tuple(out_shape)  # dz/ds of one sample: (*out_shape)
        self.label = label

    def forward(self, s: torch.Tensor, z: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        try:
            out = self.f(z) if self.arity == 1 else self.f(s, z) if self.arity == 2 else self.f(s, z, u)
        except RuntimeError as exc:
            other = sorted({str(p.dtype) for p in self.parameters() if p.dtype != z.dtype})
            if other and not isinstance(exc, torch.OutOfMemoryError):  # its own weights in another precision
                raise ConfigError(f"{self.label} failed on the state {tuple(z.shape)} {z.dtype} "
                                  f"({str(exc).strip().splitlines()[0]}): its parameters are {', '.join(other)}; make "
                                  f"them the state's dtype (drop the .double() / dtype= of its layers)") from None
            raise
        if self.out_shape is not None and (not isinstance(out, torch.Tensor) or out.shape[1:] != self.out_shape
                                           or out.shape[:1] != z.shape[:1] or out.dtype != z.dtype):
            got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
            raise ConfigError(f"{self.label} returned {got} for the state {tuple(z.shape)} {z.dtype}; dz/ds must be "
                              f"a tensor ({z.shape[0]}, {', '.join(map(str, self.out_shape))}) of the state's dtype")
        return out


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
    return TargetField(f, arity, tuple(out_shape), f"model.field ({cfg._target_})")


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
    readout = _module(call_target(cfg, "model.readout", {"dim": int(state_shape[0]),
                                                         "state_shape": tuple(state_shape),
                                                         "n_outputs": int(n_outputs)}), "model.readout")
    with torch.no_grad():
        out = readout(torch.zeros(2, *state_shape, dtype=_dtype_of(readout)))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, int(n_outputs)):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise ConfigError(f"model.readout: {cfg._target_} gives {got} for 2 states {(2, *state_shape)}; it must give "
                          f"(B, {n_outputs}), one column per output of the task")
    return readout


def _dtype_of(module: Any) -> torch.dtype:
    params = list(module.parameters()) if isinstance(module, nn.Module) else []
    return params[0].dtype if params else torch.get_default_dtype()
