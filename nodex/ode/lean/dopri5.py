"""Dormand–Prince 5(4), nodex's solver for ``method=dopri5``: its coefficient table.

It is torchdiffeq's ``dopri5`` algorithm — the same tableau, initial-step rule (Hairer I.4),
RMS error norm, step controller (safety 0.9, growth ≤ 10, shrink ≥ 0.2 on a reject), stepping
past each output depth and reading it off the 4th-order dense output — so it takes the same
steps and the same number of evaluations. What it leaves out is bookkeeping: a ``(…, 7)`` stage
buffer written through a custom autograd function and summed per stage, a dense-output fit after
*every* accepted step (here only for steps that contain an output depth), scalar tensors for every
time and step size, and autograd through the error estimate and the initial step size (here under
``no_grad``; the gradient is that of the solution at the chosen steps, as for every fixed-step
method).

The adaptive loop, forward and adjoint, is shared with tsit5 (:mod:`nodex.ode.lean.runge_kutta`,
:mod:`nodex.ode.lean.adjoint`); this module is the pair's coefficients and those of its dense
output (torchdiffeq's midpoint weights for the quartic fit). Used by :func:`nodex.ode.odesolve`
for ``method=dopri5`` with a tensor state (tuples are flattened by :mod:`nodex.ode.lean.tuples`),
increasing depths and no extra torchdiffeq options, with or without ``jump_t``
(``solver.engine=torchdiffeq`` turns it off).
"""

from __future__ import annotations

import torch

from nodex.ode.lean.runge_kutta import (
    Field, Norm, Tableau, adaptive_rk, max_rms_norm, rms_norm, with_step_rule,
)

__all__ = ["DOPRI5", "Field", "Norm", "dopri5", "max_rms_norm", "rms_norm"]

# Dormand–Prince 5(4), as in torchdiffeq/_impl/dopri5.py.
_C = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),  # the 5th-order solution
)
_E = (
    35 / 384 - 1951 / 21600,
    0.0,
    500 / 1113 - 22642 / 50085,
    125 / 192 - 451 / 720,
    -2187 / 6784 - -12231 / 42400,
    11 / 84 - 649 / 6300,
    -1.0 / 60.0,
)
_MID = tuple(  # torchdiffeq's DPS_C_MID: the weights of the state at the step's midpoint
    c / 2
    for c in (
        6025192743 / 30085553152, 0.0, 51252292925 / 65400821598, -2691868925 / 45128329728,
        187940372067 / 1594534317056, -1776094331 / 19743644256, 11237099 / 235043384,
    )
)


DOPRI5 = Tableau(_C, _A, _E, mid=_MID)  # steps by the "torchdiffeq" rule


def dopri5(
    func: Field,
    y0: torch.Tensor,
    t: list[float],
    rtol: float,
    atol: float,
    max_num_steps: int,
    norm: Norm = rms_norm,
    jump_t: list[float] | None = None,
    step_rule: str = "auto",
) -> torch.Tensor:
    """Integrate ``dy/dt = func(t, y)`` with adaptive Dormand–Prince 5(4); ``y0``: ``(B, ...)``.

    Arguments, returns and failures as :func:`nodex.ode.lean.runge_kutta.adaptive_rk`'s:
    ``(len(t), B, ...)``, the state at every depth of ``t``. ``step_rule``: ``auto`` (= ``torchdiffeq``, its
    steps) or ``hairer`` (:data:`nodex.ode.lean.runge_kutta.STEP_RULES`).
    """
    return adaptive_rk(with_step_rule(DOPRI5, step_rule), func, y0, t, rtol, atol, max_num_steps, norm, jump_t)
