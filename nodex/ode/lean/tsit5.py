"""A lean Tsitouras 5(4) (Tsit5): nodex's solver for ``method=tsit5`` (torchdiffeq has none).

Ch. Tsitouras, "Runge–Kutta pairs of order 5(4) satisfying only the first column simplifying
assumption", Comput. Math. Appl. 62 (2011) 770–775: seven stages, first-same-as-last like
dopri5, but with a smaller 5th-order error constant — at the same tolerance it usually takes
fewer or equally many steps for a smaller error. Its continuous extension is the paper's: weights
``b_i(θ)``, quartic in the step fraction ``θ``, with ``b_i(1)`` the solution weights, so the
dense output costs no extra evaluation and reads ``y0 + dt · Σ_i b_i(θ) k_i``.

It runs on the adaptive engine shared with dopri5 (:mod:`nodex.ode.lean.runge_kutta`:
torchdiffeq's error norm, step controller and ``jump_t`` restarts), under backprop or the adjoint
(:mod:`nodex.ode.lean.adjoint`), with tensor or tuple states. Having no torchdiffeq steps to
reproduce, it makes two choices of its own, those of DifferentialEquations.jl's Tsit5 (and
torchdyn's): its last step ends exactly on the last output depth (the value there is the 5th-order
solution, not the 4th-order dense output of a step that went past it), and the initial-step rule
uses the method's order, ``p = 5`` (a larger first step than torchdiffeq's ``p = 4``, which on a
trained Neural ODE was followed by a rejected second step). Both lower the gradient error per
evaluation; BENCHMARKS.md, "Work–precision", has the numbers. There is no
torchdiffeq version to fall back on, so ``solver.engine=torchdiffeq`` with it is a config error.
"""

from __future__ import annotations

import torch

from nodex.ode.lean.runge_kutta import (
    Field, Norm, Tableau, adaptive_rk, factored_weights, rms_norm, with_step_rule,
)

# The published coefficients (20 significant digits; Python rounds them to the nearest double).
_C = (0.161, 0.327, 0.9, 0.98002554090450968573, 1.0)
_B = (
    0.096460766818065229518, 0.01, 0.47988965041449957478, 1.3790085741037418932, -3.2900695154360806799,
    2.3247105240997739824,
)
_A = (
    (0.161,),
    (-0.0084806554923569885444, 0.33548065549235698854),
    (2.8971530571054934321, -6.3594484899750748431, 4.3622954328695814110),
    (5.3258648284392566044, -11.748883564062827878, 7.4955393428898362083, -0.092495066361755249257),
    (5.8614554429464200287, -12.920969317847109292, 8.1593678985761586432, -0.071584973281400997225,
     -0.028269050394068382909),
    _B,  # the 5th-order solution
)
_B_HAT = (  # the embedded 4th-order solution (its last weight multiplies f at the new state)
    0.094680755765839458075, 0.0091835655403432530968, 0.48777052842476157079, 1.2342975669304789857,
    -2.7077123499835254549, 1.8666284181705870358, 1 / 66,
)
_E = tuple(b - bh for b, bh in zip((*_B, 0.0), _B_HAT))


# The continuous extension's weights b_i(x), i = 1..7, in the paper's factored form: (scale, factors), each factor a
# polynomial in x from its highest power (runge_kutta.factored_weights multiplies them out in this order).
_X, _X2 = (1.0, 0.0), (1.0, 0.0, 0.0)
_DENSE = (
    (-1.0530884977290216, (_X, (1.0, -1.3299890189751412), (1.0, -1.4364028541716351, 0.7139816917074209))),
    (0.1017, (_X2, (1.0, -2.1966568338249754, 1.2949852507374631))),
    (2.490627285651252793, (_X2, (1.0, -2.38535645472061657, 1.57803468208092486))),
    (-16.54810288924490272, ((1.0, -1.21712927295533244), (1.0, -0.61620406037800089), _X2)),
    (47.37952196281928122, ((1.0, -1.203071208372362603), (1.0, -0.658047292653547382), _X2)),
    (-34.87065786149660974, ((1.0, -1.2), (1.0, -0.666666666666666667), _X2)),
    (2.5, ((1.0, -1.0), (1.0, -0.6), _X2)),
)


def dense_weights(x: float) -> tuple[float, ...]:
    """The continuous extension's weights ``b_i(x)``, ``i = 1..7``, at the step fraction ``x``."""
    return factored_weights(_DENSE, x)


TSIT5 = Tableau(_C, _A, _E, dense=_DENSE, step_rule="hairer")


def tsit5(
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
    """Integrate ``dy/dt = func(t, y)`` with adaptive Tsit5; ``y0``: ``(B, ...)``.

    Arguments, returns and failures as :func:`nodex.ode.lean.runge_kutta.adaptive_rk`'s:
    ``(len(t), B, ...)``, the state at every depth of ``t``. ``step_rule``: ``auto`` (= ``hairer``) or
    ``torchdiffeq`` (:data:`nodex.ode.lean.runge_kutta.STEP_RULES`).
    """
    return adaptive_rk(with_step_rule(TSIT5, step_rule), func, y0, t, rtol, atol, max_num_steps, norm, jump_t)
