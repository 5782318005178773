"""The shared adaptive engine of nodex's embedded Runge–Kutta pairs (dopri5, tsit5).

A pair is a :class:`Tableau`, data only — stage depths, stage weights (the last row: the 5th-order
solution, evaluated again as the first stage of the next step: first-same-as-last), error
weights and the coefficients of its continuous extension (dense output), one of two kinds
evaluated here: torchdiffeq's quartic fit through a midpoint value (``mid``: dopri5) or weights
``b_i(θ)`` that are polynomials in the step fraction (``dense``: tsit5). As torchdiffeq's
``_impl/dopri5.py`` is a coefficient table on its shared ``RKAdaptiveStepsizeODESolver``, adding
a pair is adding a table. :func:`adaptive_rk` integrates with any of them using
torchdiffeq's adaptive algorithm: its initial-step rule (Hairer I.4), RMS error norm, step
controller (safety 0.9, growth ≤ 10, shrink ≥ 0.2 on a reject), stepping past each output depth
and reading it off the pair's dense output, and restarting at ``jump_t``. Failures raise
``AssertionError`` with torchdiffeq's wording so every engine reports through one
:class:`nodex.errors.SolverError`.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Collection, NamedTuple

import torch

_SAFETY, _IFACTOR, _DFACTOR, _ORDER = 0.9, 10.0, 0.2, 5

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Norm = Callable[[torch.Tensor], float]
# A polynomial in x, coefficients from the highest power down: (1.0, -r) is x - r, (1.0, 0.0) is x.
Polynomial = tuple[float, ...]
# A dense-output weight b_i(x) = scale * p_1(x) * p_2(x) * ..., multiplied in that order.
FactoredWeight = tuple[float, tuple[Polynomial, ...]]


class Tableau(NamedTuple):
    """An explicit first-same-as-last pair with ``s`` stages (``s = 7`` for both pairs here), and its dense output:
    exactly one of ``mid`` and ``dense``."""

    c: tuple[float, ...]  # depths of stages 2..s-1 as fractions of the step (1.0: the step's end)
    a: tuple[tuple[float, ...], ...]  # rows for stages 2..s-1, then the solution weights
    e: tuple[float, ...]  # error weights over all s stages (the last: f at the new state)
    mid: tuple[float, ...] | None = None  # weights of y(θ = 1/2) over the s stages: the quartic fit (dopri5)
    dense: tuple[FactoredWeight, ...] | None = None  # b_i(θ) over the s stages, factored (tsit5)
    step_rule: str = "torchdiffeq"  # how it takes its first and last steps: a key of STEP_RULES

    def interpolate(self, y0: torch.Tensor, y1: torch.Tensor, ks: list[torch.Tensor], dt: float, x: float
                    ) -> torch.Tensor:
        """The state at the fraction ``x`` of the step ``y0 -> y1`` of size ``dt`` (``ks``: its ``s`` stages), from
        the pair's dense output; ``y1`` itself at ``x = 1``."""
        if x == 1.0:
            return y1
        if self.mid is not None:
            return quartic_fit(y0, y1, ks, dt, x, combine(y0, ks, self.mid, dt))
        assert self.dense is not None, "a Tableau needs its dense output: mid or dense"
        return combine(y0, ks, factored_weights(self.dense, x), dt)


def quartic_fit(
    y0: torch.Tensor, y1: torch.Tensor, ks: list[torch.Tensor], dt: float | torch.Tensor, x: float | torch.Tensor,
    y_mid: torch.Tensor,
) -> torch.Tensor:
    """torchdiffeq's dense output (``_interp_fit`` then ``_interp_evaluate``): the quartic through ``y0``, ``y1``,
    the midpoint value ``y_mid`` and the end slopes ``ks[0]``, ``ks[-1]``, at the fraction ``x`` of the step.
    ``dt``, ``x``: floats, or tensors that broadcast against the state (one per member)."""
    f0, f1 = ks[0], ks[-1]
    a = 2 * dt * (f1 - f0) - 8 * (y1 + y0) + 16 * y_mid
    b = dt * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * y_mid
    c = dt * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * y_mid
    return y0 + x * (dt * f0 + x * (c + x * (b + x * a)))


def _polynomial(coeffs: Polynomial, powers: tuple) -> float:
    """``Σ_k coeffs[k] · x^(d-k)`` summed from the highest power, ``powers[j] = x^j`` (``x·x`` for ``j = 2``)."""
    degree = len(coeffs) - 1
    value = coeffs[0] * powers[degree]
    for k in range(1, degree + 1):
        value = value + coeffs[k] * powers[degree - k]
    return value


def factored_weights(weights: tuple[FactoredWeight, ...], x: float) -> tuple[float, ...]:
    """The weights ``b_i(x)`` from their factored form (factors of degree ≤ 2), each multiplied out left to right,
    so a published factored formula keeps its rounding."""
    powers = (1.0, x, x * x)
    values = []
    for scale, factors in weights:
        value = scale
        for coeffs in factors:
            value = value * _polynomial(coeffs, powers)
        values.append(value)
    return tuple(values)


# solver.step_rule: how a pair takes its first and last steps, as (land on the last depth, p of the initial-step rule
# h1 = (0.01 / max(d1, d2)) ** (1 / (p + 1))). "torchdiffeq" (dopri5's own): p = 4, the error estimate's order, and
# stepping past the last output depth, reading it off the dense output. "hairer" (tsit5's own): Hairer's DOPRI5 code,
# as DifferentialEquations.jl and torchdyn: p = 5, the method's order (a larger first step where the field is slow),
# and the last step shortened to end on the last depth (the value there is the 5th-order solution).
STEP_RULES = {"torchdiffeq": (False, 4), "hairer": (True, 5)}


def with_step_rule(tab: Tableau, step_rule: str = "auto") -> Tableau:
    """``tab`` taking its first and last steps by ``step_rule`` (a key of :data:`STEP_RULES`; ``"auto"``: the
    pair's own)."""
    return tab if step_rule == "auto" else tab._replace(step_rule=step_rule)


def combine(y0: torch.Tensor | None, ks: list[torch.Tensor], coeffs: tuple[float, ...], dt: float) -> torch.Tensor:
    """``y0 + dt · Σ_j coeffs[j] · ks[j]`` (``y0=None``: just the sum) as one out-of-place op
    and in-place adds: a few small kernels, not a stacked buffer."""
    out = None
    for k, c in zip(ks, coeffs):
        if c == 0.0:
            continue
        if out is None:
            out = k.mul(c * dt) if y0 is None else torch.add(y0, k, alpha=c * dt)
        else:
            out.add_(k, alpha=c * dt)
    assert out is not None
    return out


def rms_norm(x: torch.Tensor) -> float:
    """The root mean square of ``x`` (torchdiffeq's default norm for one tensor)."""
    return float(x.pow(2).mean().sqrt())


def checked_segments(bounds: list[int], skip: Collection[int] = ()) -> list[tuple[int, int]]:
    """The non-empty segments ``(bounds[i], bounds[i+1])`` whose index ``i`` is not in ``skip``.

    Raises:
        ValueError: ``skip`` leaves no segment to control the steps.
    """
    segments = [(a, b) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a and i not in skip]
    if not segments:
        raise ValueError(f"the error norm needs a part of the state: segments {bounds} with {sorted(skip)} left out")
    return segments


def max_rms_norm(bounds: list[int], skip: Collection[int] = ()) -> Norm:
    """The largest RMS over the segments ``x[bounds[i]:bounds[i+1]]`` of a flat tensor
    (torchdiffeq's mixed norm for a tuple state flattened into one tensor). ``skip``: indices of segments left
    out — parts the dynamics never read (a regulariser's integrals), integrated on the steps the others choose."""
    if len(bounds) <= 2 and not skip:
        return rms_norm
    segments = checked_segments(bounds, skip)
    if len(segments) == 1:
        a, b = segments[0]
        return lambda x: rms_norm(x[a:b])

    def norm(x: torch.Tensor) -> float:
        squares = x.pow(2)
        return float(torch.stack([squares[a:b].mean() for a, b in segments]).max().sqrt())

    return norm


def initial_step(
    func: Field, t0: float, y0: torch.Tensor, f0: torch.Tensor, rtol: float, atol: float, norm: Norm = rms_norm,
    order: int = 4,
) -> float:
    """torchdiffeq's ``_select_initial_step`` (Hairer, Nørsett & Wanner I, II.4) with ``p = order``; one
    evaluation."""
    with torch.no_grad():
        scale = y0.abs().mul(rtol).add_(atol)
        d0, d1 = norm(y0 / scale), norm(f0 / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = func(time_like(t0 + h0, y0), y0 + h0 * f0)
        d2 = norm((f1 - f0) / scale) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
        return min(100 * h0, h1)


def time_like(t: float, like: torch.Tensor) -> torch.Tensor:
    """``t`` as a 0-d tensor like ``like``: a fill, not ``torch.tensor`` — the same rounding, half
    the host time, and on a GPU a kernel launch instead of a blocking host-to-device copy."""
    return torch.full((), t, dtype=like.dtype, device=like.device)


def time_beside(t: float, like: torch.Tensor, direction: float) -> torch.Tensor:
    """The representable depth just before (``direction < 0``) or after ``t``: stages that end
    on a jump see the piece they integrate, as in torchdiffeq's ``Perturb``."""
    value = time_like(t, like)
    return torch.nextafter(value, value + direction)


def step_factor(ratio: float) -> float:
    """torchdiffeq's ``_optimal_step_size``: the next step over this one from the error ratio."""
    if ratio == 0.0:
        return _IFACTOR
    if ratio == math.inf:
        return _DFACTOR
    shrink = _DFACTOR if ratio >= 1.0 else 1.0
    return min(_IFACTOR, max(_SAFETY / ratio ** (1.0 / _ORDER), shrink))


def _attempt(tab: Tableau, func: Field, y: torch.Tensor, k1: torch.Tensor, t0: float, dt: float,
             t_end: torch.Tensor, rtol: float, atol: float, norm: Norm) -> tuple[torch.Tensor, list, float]:
    """One trial step: ``(y1, stages, error ratio)``; the ratio is ``inf`` where a stage blew up."""
    ks = [k1]
    for c, a in zip(tab.c, tab.a):
        ks.append(func(t_end if c == 1.0 else time_like(t0 + c * dt, y), combine(y, ks, a, dt)))
    y1 = combine(y, ks, tab.a[-1], dt)
    ks.append(func(t_end, y1))  # first-same-as-last: k1 of the next step
    with torch.no_grad():
        error = combine(None, ks, tab.e, dt)
        tol = torch.maximum(y.abs(), y1.abs()).mul_(rtol).add_(atol)
        ratio = norm(error.div_(tol))
    if not math.isfinite(ratio):  # a stage blew up: retry smaller (torchdiffeq underflows)
        assert bool(torch.isfinite(y).all()), "non-finite values in state `y`"
        ratio = math.inf
    return y1, ks, ratio


def adaptive_rk(
    tab: Tableau,
    func: Field,
    y0: torch.Tensor,
    t: list[float],
    rtol: float,
    atol: float,
    max_num_steps: int,
    norm: Norm = rms_norm,
    jump_t: list[float] | None = None,
) -> torch.Tensor:
    """Integrate ``dy/dt = func(t, y)`` with the adaptive pair ``tab``.

    Args:
        func: ``f(t, y)``; ``t`` a 0-d tensor of ``y``'s dtype, ``y`` shaped like ``y0``.
        y0: initial state ``(B, ...)`` at ``t[0]``.
        t: increasing output depths ``[t0, t1, ..., tT]``.
        rtol, atol: tolerances of the error norm; max_num_steps: attempted steps per output interval.
        norm: of the scaled error ``error / (atol + rtol·max(|y0|, |y1|))``; accept at ≤ 1.
        jump_t: depths where ``func`` is discontinuous: steps end on them (stages there see the depth just before)
            and the next step restarts from a fresh evaluation just after, as torchdiffeq does.

    Returns:
        ``(T + 1, B, ...)``: the state at every depth of ``t`` (the first is ``y0``).

    Raises:
        AssertionError: step-size underflow, too many steps or a non-finite state.
    """
    t0 = t[0]
    land_on_end, initial_order = STEP_RULES[tab.step_rule]
    k1 = func(time_like(t0, y0), y0)
    dt = initial_step(func, t0, y0, k1, rtol, atol, norm, initial_order)
    y, outputs = y0, [y0]
    step: tuple = ()  # the last accepted step: (t_start, y_start, y_end, stages, dt)
    jumps = sorted(j for j in (jump_t or ()) if j > t0)
    land = t[-1] if land_on_end else None
    for t_out in t[1:]:
        n_steps = 0
        while t_out > t0:
            assert n_steps < max_num_steps, f"max_num_steps exceeded ({n_steps}>={max_num_steps})"
            n_steps += 1
            if not math.isfinite(dt):
                assert bool(torch.isfinite(y).all()), "non-finite values in state `y`"
                dt = 0.0
            assert t0 + dt > t0, f"underflow in dt {dt}"
            t1, dt, on_jump = step_end(t0, dt, jumps, land)
            t_end = time_beside(t1, y0, -1.0) if jumps else time_like(t1, y0)
            y1, ks, ratio = _attempt(tab, func, y, k1, t0, dt, t_end, rtol, atol, norm)
            if ratio <= 1.0:
                step = (t0, y, y1, ks, dt)
                t0, y, k1 = t1, y1, ks[-1]
                if on_jump:  # restart on the far side of the discontinuity
                    k1 = func(time_beside(t1, y0, 1.0), y1)
            dt = dt * step_factor(ratio)
        t_start, y_start, y_end, ks_step, h = step
        outputs.append(tab.interpolate(y_start, y_end, ks_step, h, (t_out - t_start) / h))
    return torch.stack(outputs)


def step_end(t0: float, dt: float, jumps: list[float], land: float | None) -> tuple[float, float, bool]:
    """Where the step from ``t0`` of size ``dt`` ends: ``(t1, t1 - t0, on a jump)``. It ends on the first jump it
    would cross; else, with ``land`` (the last output depth) and no jump before it, on ``land`` when it would
    reach within 1% of a step of it (Hairer's DOPRI5 code: no sliver of a last step)."""
    i = bisect.bisect_right(jumps, t0)  # jumps is sorted: the first one after t0
    following = jumps[i] if i < len(jumps) else None
    if following is not None and following < t0 + dt:
        return following, following - t0, True
    if land is not None and t0 + 1.01 * dt >= land and (following is None or following >= land):
        return land, land - t0, False
    return t0 + dt, dt, False
