"""The general Neural ODE of the paper (§1.0), composed from slots.

    z(0)  = h_x(x)
    dz/ds = f(s, z, u)                u: control signal (None, x, or h_x(x))
    ŷ     = h_y(z(S))                 S: fixed, or S(x) per sample (adaptive depth)
    loss  = L(ŷ) + ∫_0^S l(s, z, u) ds

The integral term rides as an extra state (tuple state), so its value and its full gradient
come out of the same solve under both autograd and adjoint sensitivity. A per-sample horizon
S(x) is handled by time rescaling: τ ∈ [0, 1], dz/dτ = S(x)·f(τ·S(x), z, u).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from nodex.models.regularizers import Regularizer
from nodex.ode import NFECounter, SolverSettings, odesolve


@dataclass
class ModelOutput:
    """What a forward pass returns.

    Attributes:
        y_hat: readout ``h_y(z(S))``, ``(B, n_out)`` (or ``(B, ...)``).
        z_S: final state ``(B, *state_shape)``.
        loss_integral: batch mean of ``∫ l ds`` (0-d) or ``None``.
        extras: per-batch tensors worth logging (e.g. ``horizon``: ``(B,)``).
        loss_regularizer: the weighted regularisers ``Σ λ_k ∫ r_k ds`` (batch mean, 0-d) or ``None``
            (training mode with ``task.regularizer`` set only; see :mod:`nodex.models.regularizers`).
        regularization: their unweighted values ``{"reg_kinetic": 0-d, ...}`` for the logs.
    """

    y_hat: torch.Tensor
    z_S: torch.Tensor
    loss_integral: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    loss_regularizer: torch.Tensor | None = None
    regularization: dict[str, torch.Tensor] = field(default_factory=dict)


class BoundDynamics(nn.Module):
    """``dz/ds`` for one batch: the field bound to its control, with the optional integral
    loss channel, regulariser channel ``(B, n_terms)`` (noise ``eps`` fixed for the solve) and
    per-sample horizon scaling. State: ``z``, or the tuple ``(z, [q], [r])`` of the channels present.
    Parameters: the field's and the loss's."""

    def __init__(
        self,
        field: nn.Module,
        control: torch.Tensor | None,
        integral_loss: nn.Module | None = None,
        horizon: torch.Tensor | None = None,
        regularizer: Regularizer | None = None,
        eps: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.field = field
        self.integral_loss = integral_loss
        self.control = control
        self.horizon = horizon
        self.regularizer = regularizer
        self.eps = eps

    def forward(self, s: torch.Tensor, state: torch.Tensor | tuple[torch.Tensor, ...]):
        z = state[0] if isinstance(state, tuple) else state
        depth = s if self.horizon is None else s * self.horizon
        if self.regularizer is None:
            f, rates = self.field(depth, z, self.control), None
        else:
            f, rates = self.regularizer.evaluate(self.field, depth, z, self.control, self.eps)
        # a per-sample horizon: d/dτ = S(x)·d/ds; the regularisers are costs of the path, ∫ r |ds| (a signed
        # horizon integrates backward where S(x) < 0, and a negative penalty would reward it)
        dz = per_sample(f, self.horizon)
        out = [dz]
        if self.integral_loss is not None:
            out.append(per_sample(self.integral_loss(depth, z, self.control, f), self.horizon))  # f: kinetic losses
        if rates is not None:
            out.append(per_sample(rates, None if self.horizon is None else self.horizon.abs()))
        return dz if len(out) == 1 else tuple(out)


def per_sample(q: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``q`` ``(B, ...)`` times ``scale`` ``(B,)`` row by row (``None``: ``q``)."""
    return q if scale is None else q * scale.reshape(-1, *([1] * (q.dim() - 1)))


class GeneralNeuralODE(nn.Module):
    """Continuous-depth model built from slots; knows nothing of configs or logging.

    Args:
        input_layer: ``h_x``: ``(B, *input_shape) -> (B, *state_shape)``.
        field: ``f(s, z, u)``.
        readout: ``h_y``: ``(B, *state_shape) -> (B, n_out)``.
        settings: solver settings (method, tolerances, sensitivity).
        control: ``u`` from ``(x, z0)``: ``None`` for no data control.
        integral_loss: ``l(s, z, u, f) -> (B,)`` (``f``: the field's value) or ``None``.
        horizon: ``g(x) -> (B,)`` per-sample depth S(x), or ``None`` for the fixed ``S``.
        jump_t: depths where the field's parameters jump (stacked models).
        S: the horizon: integrates over ``[0, S]`` (``horizon`` set: ``[0, S(x)]`` per sample instead).
        regularizer: RNODE terms added to the training loss (training mode only), or ``None``.
        steer: STEER's end-depth sampler (training mode only: ``[0, T]``, ``T ~ U(S − b, S + b)``), or ``None``.
    """

    def __init__(
        self,
        input_layer: nn.Module,
        field: nn.Module,
        readout: nn.Module,
        settings: SolverSettings,
        *,
        control: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        integral_loss: nn.Module | None = None,
        horizon: nn.Module | None = None,
        jump_t: list[float] | None = None,
        S: float = 1.0,
        regularizer: Regularizer | None = None,
        steer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.input_layer = input_layer
        self.regularizer = regularizer
        self.steer = steer
        self.field = field
        self.readout = readout
        self.integral_loss = integral_loss
        self.horizon = horizon
        self.control = control
        self.settings = settings
        self.S = float(S)
        self.nfe = NFECounter()
        # float64: torchdiffeq casts jump_t to the state's dtype; a float32 copy would shift the
        # jumps of float64 solves off the layers' breakpoints (by up to ~1e-8).
        jumps = None if not jump_t else torch.tensor(jump_t, dtype=torch.float64)
        self.register_buffer("jump_t", jumps, persistent=False)
        self.register_buffer("span", torch.tensor([0.0, self.S]), persistent=False)
        # adaptive horizons: s/S(x) in [0, 1]
        self.register_buffer("unit_span", torch.tensor([0.0, 1.0]), persistent=False)

    def _bind(self, x: torch.Tensor) -> tuple[BoundDynamics, torch.Tensor, torch.Tensor | None]:
        z0 = self.input_layer(x)
        u = self.control(x, z0) if self.control is not None else None
        S_x = self.horizon(x) if self.horizon is not None else None
        reg = self.regularizer if self.training else None
        eps = reg.noise(z0) if reg is not None else None  # drawn once per solve
        return BoundDynamics(self.field, u, self.integral_loss, S_x, reg, eps), z0, S_x

    def _span(self, z0: torch.Tensor, adaptive: bool) -> torch.Tensor:
        """``[0, S]``; ``[0, 1]`` for a per-sample horizon; ``[0, T]`` with STEER's draw in training mode."""
        if adaptive:
            return self.unit_span.to(z0.dtype)
        if self.steer is not None and self.training:
            return torch.tensor([0.0, self.steer.draw()], dtype=z0.dtype, device=z0.device)
        return self.span.to(z0.dtype)  # buffers: no host copy per call

    def _solve(self, dyn: BoundDynamics, z0, s: torch.Tensor):
        extra = [t for t in (dyn.control, dyn.horizon) if t is not None and t.requires_grad]
        params = (*dyn.parameters(), *extra)
        jump_t = self.jump_t if dyn.horizon is None else None
        quadratures = 0 if dyn.regularizer is None else dyn.regularizer.quadratures
        return odesolve(dyn, z0, s, self.settings, counter=self.nfe, jump_t=jump_t, adjoint_params=params,
                        quadratures=quadratures)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """``x``: ``(B, *input_shape)`` -> :class:`ModelOutput`."""
        dyn, z0, S_x = self._bind(x)
        span = self._span(z0, S_x is not None)
        state = [z0]
        if self.integral_loss is not None:
            state.append(torch.zeros(z0.shape[0], dtype=z0.dtype, device=z0.device))
        if dyn.regularizer is not None:
            state.append(torch.zeros(z0.shape[0], len(dyn.regularizer.names), dtype=z0.dtype, device=z0.device))
        sol = self._solve(dyn, state[0] if len(state) == 1 else tuple(state), span)
        finals = [sol[-1]] if len(state) == 1 else [c[-1] for c in sol]
        z_S = finals[0]
        loss_integral = finals[1].mean() if self.integral_loss is not None else None
        penalty, values = dyn.regularizer.summarise(finals[-1]) if dyn.regularizer is not None else (None, {})
        extras = {} if S_x is None else {"horizon": S_x.detach()}
        return ModelOutput(self.readout(z_S), z_S, loss_integral, extras, penalty, values)

    def figure_traits(self) -> frozenset[str]:
        """What this model is, for :mod:`nodex.viz` to choose its figures (``nodex.viz.protocol.TRAITS``)."""
        depth_variant = any(callable(getattr(m, "theta", None)) for m in self.field.modules())  # θ(s) layers
        flags = {"controlled": self.control is not None, "learned_horizon": self.horizon is not None,
                 "depth_variant": depth_variant}
        return frozenset(name for name, on in flags.items() if on)

    def trajectory(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """States at the depths ``s`` (``(T,)``, from 0; fractions of S(x) for an adaptive
        horizon): ``(T, B, *state_shape)``. Uses the forward solver (no adjoint)."""
        dyn, z0, _ = self._bind(x)
        if self.integral_loss is not None or dyn.regularizer is not None:
            dyn = BoundDynamics(dyn.field, dyn.control, None, dyn.horizon)
        settings = self.settings
        return odesolve(dyn, z0, s.to(z0), settings, counter=None, jump_t=self.jump_t if dyn.horizon is None else None)
