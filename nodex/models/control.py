"""Data control: the ``model.control`` slot (paper §1.9), and the ``linear_control`` field.

A data-controlled Neural ODE integrates ``dz/ds = f(s, z, u)`` where the control ``u`` is a
per-sample signal computed once from the input, so each input gets its own vector field and
1-D trajectories may "cross" (φ(x) = −x, the annuli without augmentation).

Control kinds (:data:`~nodex.models.build.CONTROLS`, built as
``build(cfg, input_shape, state_shape) -> (module u(x, z0), u_shape)``):

- ``data``: ``u = x`` (``source: input``, the raw input) or ``u = h_x(x) = z(0)``
  (``source: state0``, the initial state, as in the paper's code). ``detach`` (default
  ``false``) stops gradients through ``u``; the reference code (torchdyn ≤0.2.2
  ``DataControl``) **detaches** the initial condition. We default to not detaching so that
  ``h_x`` is trained through the control path as well; set ``detach: true`` to match the
  reference exactly. (With ``source: input`` the flag changes nothing: ``x`` is data.)
- ``condition``: ``u = one_hot(k, n)`` where ``k`` is the **last input column**, an integer
  condition index in ``[0, n)`` (used by the data-controlled CNF, see ``nodex.models.cnf``).

How a field uses ``u`` is the field's business: the MLP field concatenates the flattened
``u`` to its input (the paper's nonlinear form: ``DataControl-Linear(n_z + n_u, ...)``); conv
fields take ``u`` as extra channels. :class:`LinearControlField` (``field.kind:
linear_control``) is the paper's *linear* form: a field affine in ``u``,

    f(s, z, u) = g(s, z) + B u,

with ``g`` an ordinary MLP field (``hidden: []`` makes it linear in ``z`` too: the 1-D
``ż = a z + b x`` of the paper's proposition, which maps x ↦ −x at ``S = 1``).
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from nodex.errors import ConfigError, config_key
from nodex.models.build import CONTROLS
from nodex.models.fields import FIELDS, flat_size, mlp_field

SOURCES = ("input", "state0")


class DataControl(nn.Module):
    """``u(x, z0)``: the raw input ``x`` or the initial state ``z0``, optionally detached.

    Shapes: ``x`` ``(B, *input_shape)``, ``z0`` ``(B, *state_shape)`` -> ``u`` of the chosen one.

    Raises:
        ValueError: an unknown ``source`` or a non-bool ``detach``.
    """

    def __init__(self, source: str = "input", detach: bool = False) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source={source!r} is unknown; choose one of: {', '.join(SOURCES)}")
        if not isinstance(detach, bool):
            raise ValueError(f"detach={detach!r} must be true or false")
        self.source = source
        self.detach = detach

    def forward(self, x: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        u = x if self.source == "input" else z0
        return u.detach() if self.detach else u

    def extra_repr(self) -> str:
        return f"source={self.source}, detach={self.detach}"


class ConditionControl(nn.Module):
    """``u = one_hot(x[:, -1], n)``: the last input column holds a condition index ``k``.

    Shapes: ``x`` ``(B, d + 1)`` -> ``u`` ``(B, n)``.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor, z0: torch.Tensor | None = None) -> torch.Tensor:
        k = x[:, -1].round().long()
        return nn.functional.one_hot(k.clamp(0, self.n - 1), self.n).to(x.dtype)


@CONTROLS.register("data")
def build_data_control(
    cfg: DictConfig, input_shape: tuple[int, ...], state_shape: tuple[int, ...]
) -> tuple[nn.Module, tuple[int, ...]]:
    source = cfg.get("source", "input")
    with config_key("model.control"):
        module = DataControl(source, cfg.get("detach", False))
    return module, tuple(input_shape if source == "input" else state_shape)


@CONTROLS.register("condition")
def build_condition_control(
    cfg: DictConfig, input_shape: tuple[int, ...], state_shape: tuple[int, ...]
) -> tuple[nn.Module, tuple[int, ...]]:
    n = cfg.get("n")
    if not isinstance(n, int) or n < 1:
        raise ConfigError(
            f"model.control.n={n!r} must be the number of conditions (a positive integer) for control.kind=condition"
        )
    if len(input_shape) != 1:
        raise ConfigError(
            "model.control.kind=condition needs flat inputs whose last column is the condition index, "
            f"got input shape {tuple(input_shape)}"
        )
    return ConditionControl(n), (n,)


class LinearControlField(nn.Module):
    """The paper's linear data control: ``f(s, z, u) = g(s, z) + B u``, affine in ``u``.

    Args:
        g: field on the state alone, called ``g(s, z)`` -> ``(B, n_out)``.
        control_features: flat control width ``n_u``; ``B`` is ``(n_out, n_u)``.
        out_features: ``n_out``.
        zero_init: start with ``B = 0`` (with a zero-init ``g``: the identity flow).
    """

    def __init__(
        self, g: nn.Module, control_features: int, out_features: int, *, zero_init: bool = False
    ) -> None:
        super().__init__()
        self.g = g
        self.B = nn.Linear(control_features, out_features, bias=False)
        if zero_init:
            nn.init.zeros_(self.B.weight)

    def forward(self, s: torch.Tensor, z: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        if u is None:
            raise ValueError("LinearControlField needs a control u (B, n_u); got None")
        return self.g(s, z) + self.B(u.reshape(u.shape[0], -1))


@FIELDS.register("linear_control")
def build_linear_control_field(
    cfg: DictConfig,
    state_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    control_shape: tuple[int, ...] | None,
    S: float,
) -> nn.Module:
    if control_shape is None:
        raise ConfigError(
            "model.field.kind=linear_control needs a control signal: set model.control.kind=data "
            "(or use field.kind=mlp)"
        )
    if len(state_shape) != 1:
        raise ConfigError(f"model.field.kind=linear_control needs a flat state, got shape {tuple(state_shape)}")
    # g is the same MLP field as field.kind=mlp, on the state alone (the control enters through B)
    g = mlp_field(cfg, state_shape[0], out_shape[0], 0, S)
    zero_init = cfg.get("zero_init_last", True)
    return LinearControlField(g, flat_size(control_shape), math.prod(out_shape), zero_init=zero_init)
