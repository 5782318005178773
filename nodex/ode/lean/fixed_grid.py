"""Lean fixed-step solvers: nodex's ``euler``, ``midpoint`` and ``rk4``, under backprop and (as the forward and
the backward solve of :func:`nodex.ode.lean.adjoint.fixed_grid_adjoint`) the adjoint.

They take exactly torchdiffeq's steps and do exactly its arithmetic — the same grid
(``ceil((S_end - S_start) / step_size + 1)`` points in the depths' dtype, the last one moved onto
the end), the same stage formulas (``rk4`` is torchdiffeq's 3/8-rule variant), the same linear
interpolation at output depths between grid points — so the values are bit-for-bit
torchdiffeq's (tested). What they leave out is the host work of its grid loop: a tensor
comparison read back to Python at every step (``t1 >= t[j]``, a device sync on a GPU), 0-d time
tensors rebuilt by arithmetic at every stage, and a ``torch.empty`` solution buffer filled by
indexed copies. Here the grid, every stage depth and every step size are computed on the host
(in the depths' dtype, so they are the same numbers) once per grid and kept, the stage depths
already on the state's device; the loop then issues only the field's kernels and the stage sums,
with no host sync — which is what lets ``trainer.cuda_graph`` capture it.

Used by :func:`nodex.ode.odesolve` for these methods under either sensitivity, with no extra
torchdiffeq options and increasing depths (``solver.engine=torchdiffeq`` turns it off).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

LEAN_FIXED_METHODS = ("euler", "midpoint", "rk4")
_ONE_THIRD, _TWO_THIRDS = 1 / 3, 2 / 3  # the Python floats torchdiffeq's rk4 multiplies by

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _grid(t: list[float], step_size: float, dtype: torch.dtype) -> torch.Tensor:
    """torchdiffeq's ``_grid_constructor_from_step_size``, on the host in ``dtype``; at least one step (there a
    step far beyond the depth, ``(end - start) / step_size + 1`` rounding to 1, gave a grid of one node: no step)."""
    t_host = torch.tensor(t, dtype=dtype)
    start, end = t_host[0], t_host[-1]
    n = max(2, int(torch.ceil((end - start) / step_size + 1).item()))
    grid = torch.arange(0, n, dtype=dtype) * step_size + start
    grid[-1] = end
    return grid


def _piecewise_grid(t: list[float], step_size: float, dtype: torch.dtype, jumps: list[float]) -> torch.Tensor:
    """A grid with a node on every jump inside ``(t[0], t[-1])``: each piece between consecutive
    nodes ``a < b`` is split into ``ceil((b - a) / step_size)`` equal steps, so no step straddles a
    jump. The jumps are depths in ``dtype``: a piece of ``k`` steps in exact arithmetic stays at
    ``k`` although rounding ``a`` and ``b`` to ``dtype`` lengthens it (slack: a few units in the last
    place of the larger end, and 1e-9 relative). Without such a jump it is torchdiffeq's grid
    (:func:`_grid`), so values stay torchdiffeq's."""
    start, end = t[0], t[-1]
    inner = sorted({j for j in torch.tensor(jumps, dtype=dtype).tolist() if start < j < end})
    if not inner:
        return _grid(t, step_size, dtype)
    bounds = torch.tensor([start, *inner, end], dtype=torch.float64)
    pieces, eps = [], torch.finfo(dtype).eps
    for a, b in zip(bounds[:-1], bounds[1:]):
        rounding = 4 * eps * max(1.0, abs(float(a)), abs(float(b)))
        n = max(1, math.ceil((float(b - a) - rounding) / step_size * (1 - 1e-9)))
        pieces.append(a + (b - a) * torch.arange(n, dtype=torch.float64) / n)
    grid = torch.cat([*pieces, bounds[-1:]]).to(dtype)
    grid[0], grid[-1] = torch.tensor(t, dtype=dtype)[[0, -1]]
    return grid


def _stage_depths(grid: torch.Tensor, method: str) -> torch.Tensor:
    """``(n_steps, n_stages)``: the depth of every field evaluation, computed as torchdiffeq
    computes it (``t0 + dt * c`` in the grid's dtype; the last rk4 stage is ``t1`` itself)."""
    t0, t1 = grid[:-1], grid[1:]
    dt = t1 - t0
    if method == "euler":
        return t0.unsqueeze(1)
    if method == "midpoint":
        return torch.stack([t0, t0 + 0.5 * dt], 1)
    return torch.stack([t0, t0 + dt * _ONE_THIRD, t0 + dt * _TWO_THIRDS, t1], 1)


def _one_sided(stages: torch.Tensor, grid: torch.Tensor, jumps: list[float]) -> torch.Tensor:
    """``stages`` (in the field's dtype) with every stage that sits on a jump at its step's start
    moved to the next representable depth and every one on a jump at its step's end to the one
    before: each step sees only the piece it integrates (its one-sided limits), as torchdiffeq's
    ``perturb`` does, and the method keeps its order on a piecewise-smooth field."""
    if not jumps:
        return stages
    on_jump = torch.isin(grid, torch.tensor(jumps, dtype=grid.dtype))
    t0 = grid[:-1].to(stages.dtype).unsqueeze(1)
    t1 = grid[1:].to(stages.dtype).unsqueeze(1)
    up = (stages == t0) & on_jump[:-1].unsqueeze(1)
    down = (stages == t1) & on_jump[1:].unsqueeze(1)
    stages = torch.where(up, torch.nextafter(stages, t1), stages)
    return torch.where(down, torch.nextafter(stages, t0), stages)


class _Plan(NamedTuple):
    """Everything about one grid the loop needs: host floats, and the stage depths on the device."""

    grid: list[float]  # the grid points
    dts: list[float]  # step sizes, exact in the depths' dtype
    t_out: list[float]  # the output depths, rounded to the depths' dtype
    stages: torch.Tensor  # (n_steps, n_stages) on the state's device, in its dtype


_PLANS: dict[tuple, _Plan] = {}


def _plan(t: list[float], step_size: float, method: str, dtype: torch.dtype, y0: torch.Tensor, jumps: tuple) -> _Plan:
    """The plan of a grid, made once and kept: a training run solves on the same grid every step,
    and on a GPU the stage depths must not be copied there again (no host-to-device copy may happen
    inside a CUDA-graph capture)."""
    key = (tuple(t), step_size, method, dtype, y0.dtype, y0.device, jumps)
    plan = _PLANS.get(key)
    if plan is None:
        grid = _piecewise_grid(t, step_size, dtype, list(jumps))
        stages = _one_sided(_stage_depths(grid, method).to(y0.dtype), grid, list(jumps))
        t_out = torch.tensor(t, dtype=dtype).tolist()
        plan = _Plan(grid.tolist(), (grid[1:] - grid[:-1]).tolist(), t_out, stages.to(y0.device))
        if len(_PLANS) >= 64:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def fixed_grid(
    func: Field,
    y0: torch.Tensor,
    t: list[float],
    step_size: float,
    method: str,
    dtype: torch.dtype,
    jump_t: list[float] | None = None,
) -> torch.Tensor:
    """Integrate ``dy/dt = func(t, y)`` on torchdiffeq's fixed grid (with nodes on ``jump_t``).

    Args:
        func: ``f(t, y)``; ``t`` a 0-d tensor (dtype ``y0.dtype``, on ``y0``'s device).
        y0: initial state ``(B, ...)``.
        t: increasing output depths, host floats (``t[0]`` is where ``y0`` holds).
        step_size: the grid spacing.
        method: ``euler``, ``midpoint`` or ``rk4``.
        dtype: the depths' dtype: the grid and the interpolation are computed in it (the field
            gets its depths cast to ``y0.dtype``, as torchdiffeq casts them).
        jump_t: depths where ``func`` is discontinuous (stacked fields): the grid gets a node on
            each, and a stage on one sees the side of the step it belongs to (one-sided limits).

    Returns:
        ``(len(t), B, ...)``: the state at every output depth.
    """
    jumps = tuple(sorted(set(jump_t))) if jump_t else ()
    grid_host, dts, t_out, stages = _plan(t, step_size, method, dtype, y0, jumps)
    out, j, y = [y0], 1, y0
    for i, dt in enumerate(dts):
        s = stages[i]
        if method == "euler":
            dy = dt * func(s[0], y)
        elif method == "midpoint":
            f0 = func(s[0], y)
            dy = dt * func(s[1], y + f0 * (0.5 * dt))
        else:  # rk4: torchdiffeq's rk4_alt_step_func (3/8 rule), term for term
            k1 = func(s[0], y)
            k2 = func(s[1], y + dt * k1 * _ONE_THIRD)
            k3 = func(s[2], y + dt * (k2 - k1 * _ONE_THIRD))
            k4 = func(s[3], y + dt * (k1 - k2 + k3))
            dy = (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
        y1 = y + dy
        a, b = grid_host[i], grid_host[i + 1]
        while j < len(t_out) and b >= t_out[j]:
            out.append(_linear(a, b, y, y1, t_out[j], dtype))
            j += 1
        y = y1
    return torch.stack(out)


def _linear(t0: float, t1: float, y0: torch.Tensor, y1: torch.Tensor, t: float, dtype: torch.dtype) -> torch.Tensor:
    """torchdiffeq's ``_linear_interp``: the end points exactly, else ``y0 + slope (y1 - y0)``
    with the slope computed in the depths' dtype."""
    if t == t0:
        return y0
    if t == t1:
        return y1
    slope = float((torch.tensor(t, dtype=dtype) - t0) / (torch.tensor(t1, dtype=dtype) - t0))
    return y0 + slope * (y1 - y0)

