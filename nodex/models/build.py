"""Build a :class:`NeuralODE` from the ``model`` config and the data's shapes."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig
from torch import nn

from nodex.errors import ConfigError
from nodex.models.fields import FIELDS, HigherOrderField
from nodex.models.inputs import INPUT_LAYERS
from nodex.models.neural_ode import NeuralODE
from nodex.models.readouts import READOUTS
from nodex.ode import SolverSettings


@dataclass(frozen=True)
class DataSpec:
    """Shapes a model must fit: one input ``(*input_shape)`` and ``n_outputs`` readout units."""

    input_shape: tuple[int, ...]
    n_outputs: int


def build_model(cfg: DictConfig, spec: DataSpec, settings: SolverSettings) -> NeuralODE:
    """Compose h_x, f (with order n), h_y from ``cfg`` (the ``model`` group).

    Raises:
        ConfigError: an unknown slot kind, or state dimensions that do not fit the order.
    """
    input_layer, state_shape = INPUT_LAYERS.get(cfg.input_layer.kind)(cfg.input_layer, spec.input_shape)
    order = int(cfg.get("order", 1))
    if order < 1:
        raise ConfigError(f"model.order={order} must be >= 1")
    if state_shape[0] % order:
        raise ConfigError(
            f"model.order={order} splits the state into {order} equal blocks, but the state has {state_shape[0]} channels; "
            f"make the state width a multiple of {order} (e.g. via model.input_layer)"
        )
    out_shape = (state_shape[0] // order, *state_shape[1:])
    field: nn.Module = FIELDS.get(cfg.field.kind)(cfg.field, state_shape, out_shape, None, settings.S)
    if order > 1:
        field = HigherOrderField(field, order)
    readout = READOUTS.get(cfg.readout.kind)(cfg.readout, state_shape, spec.n_outputs)
    return NeuralODE(input_layer, field, readout, settings)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
