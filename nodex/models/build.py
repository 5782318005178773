"""Build a model from the ``model`` config and the data's shapes.

Slots and their registries (each maps ``kind`` -> builder):

- ``model.kind``             :data:`MODELS`        (default ``neural_ode``)
Each of ``field``, ``input_layer``, ``readout`` is a config group (``configs/model/field/``, ...) whose option is either
a built-in ``kind`` or a user's ``_target_`` (:mod:`nodex.models.user` states the contract).

- ``model.input_layer.kind`` :data:`~nodex.models.inputs.INPUT_LAYERS`
- ``model.control.kind``     :data:`CONTROLS`      ``build(cfg, input_shape, state_shape) -> (fn(x, z0) -> u, u_shape)``
- ``model.field.kind``       :data:`~nodex.models.fields.FIELDS`
- ``model.order``            n-th order wrapper
- ``model.readout.kind``     :data:`~nodex.models.readouts.READOUTS`
- ``model.horizon``          ``kind: fixed`` integrates over ``[0, S]`` (``model.horizon.S``); any other kind is
                             :data:`HORIZONS` ``build(cfg, input_shape, S) -> nn.Module g(x) -> (B,)``
- ``model.integral_loss.kind`` :data:`INTEGRAL_LOSSES` ``build(cfg, state_shape, S) -> nn.Module l(s, z, u, f) -> (B,)``
                             (f = the field's value)
- ``task.regularizer``       RNODE terms ``{kinetic: λ, jacobian: λ}`` (:mod:`nodex.models.regularizers`), handed to
                             :func:`build_model` by the caller; ``model.horizon.steer``: STEER's random end depth

A missing optional slot (``control``, ``horizon``, ``integral_loss``) or ``kind: none`` means
the plain model. Fields may expose ``breakpoints`` (depths where θ(s) jumps) on any
sub-module; they are handed to adaptive solvers as ``jump_t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from omegaconf import DictConfig
from torch import nn

from nodex.errors import ConfigError
from nodex.models.fields import FIELDS, HigherOrderField
from nodex.models.inputs import INPUT_LAYERS
from nodex.models.neural_ode import GeneralNeuralODE
from nodex.models.readouts import READOUTS
from nodex.models.regularizers import Regularizer, regularizer_from_config, steer_from_config
from nodex.ode import SolverSettings
from nodex.models.user import build_target_field, build_target_input_layer, build_target_readout
from nodex.registry import Registry
from nodex.targets import has_target

MODELS: Registry[Callable[..., nn.Module]] = Registry("model.kind")
CONTROLS: Registry[Callable[..., tuple]] = Registry("model.control.kind")
HORIZONS: Registry[Callable[..., nn.Module]] = Registry("model.horizon.kind")
INTEGRAL_LOSSES: Registry[Callable[..., nn.Module]] = Registry("model.integral_loss.kind")


@dataclass(frozen=True)
class DataSpec:
    """Shapes a model must fit: one input ``(*input_shape)`` and ``n_outputs`` readout units."""

    input_shape: tuple[int, ...]
    n_outputs: int


def _slot(cfg: DictConfig, name: str) -> DictConfig | None:
    node = cfg.get(name)
    if node is None or node.get("kind", "none") == "none":
        return None
    return node


def horizon_length(cfg: DictConfig) -> float:
    """The horizon ``S`` of a ``model`` config (``model.horizon.S``; 1.0 when the slot is absent).

    Raises:
        ConfigError: ``S`` is not a positive number.
    """
    node = cfg.get("horizon")
    S = 1.0 if node is None or node.get("S") is None else node.S
    if isinstance(S, bool) or not isinstance(S, (int, float)) or not (math.isfinite(S) and S > 0):
        raise ConfigError(f"model.horizon.S={S!r} (the integration horizon) must be a positive, finite number")
    return float(S)


def field_breakpoints(field: nn.Module) -> list[float]:
    """Depths where some sub-module's parameters jump (its ``breakpoints`` attribute)."""
    return sorted({float(b) for m in field.modules() for b in getattr(m, "breakpoints", ())})


def build_model(
    cfg: DictConfig, spec: DataSpec, settings: SolverSettings, regularizer: DictConfig | None = None
) -> nn.Module:
    """Build the model ``cfg.kind`` (default ``neural_ode``), with the ``task.regularizer`` slot when given.

    Raises:
        ConfigError: an unknown slot kind, shapes that do not fit together, or regulariser terms left out of an
            error control that torchdiffeq's engine cannot leave them out of.
    """
    reg = regularizer_from_config(regularizer, cfg)
    if reg is not None and not reg.error_control and not (settings.is_fixed_step or settings.own_adaptive):
        raise ConfigError(
            f"task.regularizer.error_control=false needs nodex's adaptive engine, not {settings.describe()} on "
            "torchdiffeq's (which controls every part): set solver=dopri5 or solver=tsit5 with solver.engine=auto, "
            "or task.regularizer.error_control=true"
        )
    return MODELS.get(cfg.get("kind", "neural_ode"))(cfg, spec, settings, reg)


def split_order(state_shape: tuple[int, ...], order: int) -> tuple[int, ...]:
    """The field's output shape for an n-th order model: one of ``order`` equal blocks."""
    if order < 1:
        raise ConfigError(f"model.order={order} must be >= 1")
    if state_shape[0] % order:
        raise ConfigError(
            f"model.order={order} splits the state into {order} equal blocks, but the state has {state_shape[0]} "
            f"channels; make the state width a multiple of {order} (e.g. via model.input_layer)"
        )
    return (state_shape[0] // order, *state_shape[1:])


def build_field(cfg: DictConfig, state_shape: tuple[int, ...], out_shape: tuple[int, ...],
                control_shape: tuple[int, ...] | None, S: float) -> nn.Module:
    """The ``model.field`` slot: a built-in ``kind`` or a user's ``_target_`` (:mod:`nodex.models.user`)."""
    if has_target(cfg):
        return build_target_field(cfg, state_shape, out_shape, control_shape, S)
    return FIELDS.get(cfg.kind)(cfg, state_shape, out_shape, control_shape, S)


def build_input_layer(cfg: DictConfig, input_shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """The ``model.input_layer`` slot and the state shape it makes."""
    if has_target(cfg):
        return build_target_input_layer(cfg, input_shape)
    return INPUT_LAYERS.get(cfg.kind)(cfg, input_shape)


def build_readout(cfg: DictConfig, state_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """The ``model.readout`` slot."""
    if has_target(cfg):
        return build_target_readout(cfg, state_shape, n_outputs)
    return READOUTS.get(cfg.kind)(cfg, state_shape, n_outputs)


@MODELS.register("neural_ode")
def build_neural_ode(
    cfg: DictConfig, spec: DataSpec, settings: SolverSettings, regularizer: Regularizer | None = None
) -> GeneralNeuralODE:
    """Compose h_x, control, f (with order n), h_y, horizon (and STEER), integral loss and regulariser."""
    input_layer, state_shape = build_input_layer(cfg.input_layer, spec.input_shape)
    state_shape = tuple(state_shape)
    out_shape = split_order(state_shape, int(cfg.get("order", 1)))
    control, control_shape = None, None
    if (node := _slot(cfg, "control")) is not None:
        control, control_shape = CONTROLS.get(node.kind)(node, spec.input_shape, state_shape)
    S = horizon_length(cfg)
    field = build_field(cfg.field, state_shape, out_shape, control_shape, S)
    if int(cfg.get("order", 1)) > 1:
        field = HigherOrderField(field, int(cfg.order))
    readout = build_readout(cfg.readout, state_shape, spec.n_outputs)
    horizon = None
    if (node := _slot(cfg, "horizon")) is not None and node.kind != "fixed":
        horizon = HORIZONS.get(node.kind)(node, spec.input_shape, S)
    integral = None
    if (node := _slot(cfg, "integral_loss")) is not None:
        integral = INTEGRAL_LOSSES.get(node.kind)(node, state_shape, S)
    return GeneralNeuralODE(
        input_layer, field, readout, settings,
        control=control, integral_loss=integral, horizon=horizon, jump_t=field_breakpoints(field) or None, S=S,
        regularizer=regularizer, steer=steer_from_config(cfg, S),
    )


def count_parameters(model: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
