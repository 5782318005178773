"""A lean Dormand–Prince 5(4): nodex's solver for ``method=dopri5``.

It is torchdiffeq's ``dopri5`` algorithm — the same tableau, initial-step rule (Hairer I.4),
RMS error norm, step controller (safety 0.9, growth ≤ 10, shrink ≥ 0.2 on a reject), stepping
past each output depth and reading it off the 4th-order dense output — so it takes the same
steps and the same number of evaluations. What it leaves out is the bookkeeping that costs
15–30% of a small model's training step there: a ``(…, 7)`` stage buffer written through a
custom autograd function and summed per stage, a dense-output fit after *every* accepted step
(here only for steps that contain an output depth), scalar tensors for every time and step size,
and autograd through the error estimate and the initial step size (here under ``no_grad``; the
gradient is that of the solution at the chosen steps, as for every fixed-step method).

Used by :func:`nodex.ode.odesolve` for ``method=dopri5`` with a tensor state (tuples are
flattened by :mod:`nodex.ode.lean.tuples`), increasing depths and no extra torchdiffeq options,
under backprop or the adjoint (:mod:`nodex.ode.lean.adjoint`), with or without ``jump_t``
(``solver.engine=torchdiffeq`` turns it off). Failures raise ``AssertionError`` with
torchdiffeq's wording so both engines report through the same :class:`SolverError`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

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
_MID = tuple(
    c / 2
    for c in (
        6025192743 / 30085553152, 0.0, 51252292925 / 65400821598, -2691868925 / 45128329728,
        187940372067 / 1594534317056, -1776094331 / 19743644256, 11237099 / 235043384,
    )
)
_SAFETY, _IFACTOR, _DFACTOR, _ORDER = 0.9, 10.0, 0.2, 5

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Norm = Callable[[torch.Tensor], float]


def _combine(y0: torch.Tensor | None, ks: list[torch.Tensor], coeffs: tuple[float, ...], dt: float) -> torch.Tensor:
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


def max_rms_norm(bounds: list[int]) -> Norm:
    """The largest RMS over the segments ``x[bounds[i]:bounds[i+1]]`` of a flat tensor
    (torchdiffeq's mixed norm for a tuple state flattened into one tensor)."""
    if len(bounds) <= 2:
        return rms_norm

    def norm(x: torch.Tensor) -> float:
        squares = x.pow(2)
        means = [squares[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        return float(torch.stack(means).max().sqrt())

    return norm


def _initial_step(
    func: Field, t0: float, y0: torch.Tensor, f0: torch.Tensor, rtol: float, atol: float, norm: Norm = rms_norm
) -> float:
    """torchdiffeq's ``_select_initial_step`` (Hairer, Nørsett & Wanner I, II.4); one evaluation."""
    with torch.no_grad():
        scale = y0.abs().mul(rtol).add_(atol)
        d0, d1 = norm(y0 / scale), norm(f0 / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = func(_time(t0 + h0, y0), y0 + h0 * f0)
        d2 = norm((f1 - f0) / scale) / h0
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / _ORDER)
        return min(100 * h0, h1)


def _time(t: float, like: torch.Tensor) -> torch.Tensor:
    """``t`` as a 0-d tensor like ``like``: a fill, not ``torch.tensor`` — the same rounding, half
    the host time, and on a GPU a kernel launch instead of a blocking host-to-device copy."""
    return torch.full((), t, dtype=like.dtype, device=like.device)


def _interpolate(y0: torch.Tensor, y1: torch.Tensor, ks: list[torch.Tensor], dt: float, x: float) -> torch.Tensor:
    """The 4th-order dense output of the step ``y0 -> y1`` at the fraction ``x`` of it."""
    if x == 1.0:
        return y1
    f0, f1 = ks[0], ks[-1]
    y_mid = _combine(y0, ks, _MID, dt)
    a = 2 * dt * (f1 - f0) - 8 * (y1 + y0) + 16 * y_mid
    b = dt * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * y_mid
    c = dt * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * y_mid
    return y0 + x * (dt * f0 + x * (c + x * (b + x * a)))


def _time_beside(t: float, like: torch.Tensor, direction: float) -> torch.Tensor:
    """The representable depth just before (``direction < 0``) or after ``t``: stages that end
    on a jump see the piece they integrate, as in torchdiffeq's ``Perturb``."""
    value = _time(t, like)
    return torch.nextafter(value, value + direction)


def dopri5(
    func: Field,
    y0: torch.Tensor,
    t: list[float],
    rtol: float,
    atol: float,
    max_num_steps: int,
    norm: Norm = rms_norm,
    jump_t: list[float] | None = None,
) -> torch.Tensor:
    """Integrate ``dy/dt = func(t, y)`` with adaptive Dormand–Prince 5(4).

    Args:
        func: ``f(t, y)``; ``t`` a 0-d tensor of ``y``'s dtype, ``y`` shaped like ``y0``.
        y0: initial state ``(B, ...)`` at ``t[0]``.
        t: increasing output depths ``[t0, t1, ..., tT]``.
        rtol, atol: tolerances of the RMS error norm.
        max_num_steps: attempted steps allowed per output interval.
        norm: of the scaled error ``error / (atol + rtol·max(|y0|, |y1|))``; accept at ≤ 1.
        jump_t: depths where ``func`` is discontinuous: steps end exactly on them, stages that
            end there see the depth just before, and the next step restarts from a fresh
            evaluation just after (one extra evaluation per jump), as torchdiffeq does.

    Returns:
        ``(T + 1, B, ...)``: the state at every depth of ``t`` (the first is ``y0``).

    Raises:
        AssertionError: step-size underflow, too many steps or a non-finite state (worded as
            torchdiffeq words them).
    """
    t0 = t[0]
    k1 = func(_time(t0, y0), y0)
    dt = _initial_step(func, t0, y0, k1, rtol, atol, norm)
    y = y0
    outputs = [y0]
    step: tuple = ()  # the last accepted step: (t_start, y_start, y_end, stages, dt)
    jumps = sorted(j for j in (jump_t or ()) if j > t0)
    next_jump = 0
    for t_out in t[1:]:
        n_steps = 0
        while t_out > t0:
            assert n_steps < max_num_steps, f"max_num_steps exceeded ({n_steps}>={max_num_steps})"
            n_steps += 1
            if not math.isfinite(dt):
                assert bool(torch.isfinite(y).all()), "non-finite values in state `y`"
                dt = 0.0
            assert t0 + dt > t0, f"underflow in dt {dt}"
            while next_jump < len(jumps) and jumps[next_jump] <= t0:
                next_jump += 1
            on_jump = next_jump < len(jumps) and jumps[next_jump] < t0 + dt
            t1 = jumps[next_jump] if on_jump else t0 + dt
            if on_jump:
                dt = t1 - t0
            t_end = _time_beside(t1, y0, -1.0) if jumps else _time(t1, y0)
            ks = [k1]
            for c, a in zip(_C, _A):
                ks.append(func(t_end if c == 1.0 else _time(t0 + c * dt, y0), _combine(y, ks, a, dt)))
            y1 = _combine(y, ks, _A[-1], dt)
            ks.append(func(t_end, y1))  # first-same-as-last: k1 of the next step
            with torch.no_grad():
                error = _combine(None, ks, _E, dt)
                tol = torch.maximum(y.abs(), y1.abs()).mul_(rtol).add_(atol)
                ratio = norm(error.div_(tol))
            if not math.isfinite(ratio):  # a stage blew up: retry smaller (torchdiffeq underflows)
                assert bool(torch.isfinite(y).all()), "non-finite values in state `y`"
                ratio = math.inf
            if ratio <= 1.0:
                step = (t0, y, y1, ks, dt)
                t0, y, k1 = t1, y1, ks[-1]
                if on_jump:  # restart on the far side of the discontinuity
                    k1 = func(_time_beside(t1, y0, 1.0), y1)
            if ratio == 0.0:
                factor = _IFACTOR
            elif ratio == math.inf:
                factor = _DFACTOR
            else:
                shrink = _DFACTOR if ratio >= 1.0 else 1.0
                factor = min(_IFACTOR, max(_SAFETY / ratio ** (1.0 / _ORDER), shrink))
            dt = dt * factor
        t_start, y_start, y_end, ks_step, h = step
        outputs.append(_interpolate(y_start, y_end, ks_step, h, (t_out - t_start) / h))
    return torch.stack(outputs)
