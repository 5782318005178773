"""The adjoint method on nodex's lean solvers (dopri5, tsit5, the fixed grid): O(1)-memory gradients,
torchdiffeq's algorithm.

Forward: solve without a graph. Backward: for each output interval, from the last, integrate
the augmented state ``[z, a, a_θ]`` (flattened into one tensor) back in depth,

    dz/ds = f(s, z),   da/ds = -aᵀ ∂f/∂z,   da_θ/ds = -aᵀ ∂f/∂θ,

restarting ``z`` from the forward solution at every output depth and adding that output's
incoming gradient to ``a`` — as torchdiffeq's ``odeint_adjoint`` does, with its error norm
(the largest RMS over ``z``, ``a`` and, unless ``seminorm``, each parameter's ``a_θ``). For a
depth-independent field both take the same backward steps. For a depth-dependent one
torchdiffeq also integrates (and error-controls) the depth adjoint ``∫ aᵀ ∂f/∂s`` even when the
depths need no gradient; nodex leaves that unused quantity out, so its backward solve can take
fewer steps. One ``torch.cat`` per evaluation builds the flat derivative instead of
torchdiffeq's tuple flattening and bookkeeping.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from nodex.ode.lean.dopri5 import DOPRI5
from nodex.ode.lean.runge_kutta import Field, Norm, Tableau, adaptive_rk, max_rms_norm, with_step_rule
from nodex.ode.lean.fixed_grid import fixed_grid
from nodex.ode.lean.member_steps import adaptive_rk_members, member_rms_norm
from nodex.ode.lean.tsit5 import TSIT5


Solve = Callable[[Field, torch.Tensor, list[float], Norm, "list[float] | None"], torch.Tensor]


class _Adjoint(torch.autograd.Function):
    """``solve`` forward without a graph; backward: ``solve`` of the augmented system, per output interval.

    ``opts``: ``(seminorm, jump_t, state_bounds, per_member, skip)``. ``per_member``: the state is ``(K, M)``, ``K``
    independent rows (:mod:`nodex.ode.lean.member_steps`), every parameter has a leading ``K`` (row ``k``'s slice is
    row ``k``'s), and the augmented state is ``(K, ·)``: each row's ``[z, a, a_θ]``, solved with its own steps.
    ``skip``: the state's parts (indices into ``state_bounds``' segments) left out of the error norm, forward and,
    with their adjoints, backward."""

    @staticmethod
    def forward(
        ctx: Any, func: Field, t: list[float], solve: Solve, opts: tuple, y0: torch.Tensor, *params: torch.Tensor
    ) -> torch.Tensor:
        _, jump_t, state_bounds, per_member, skip = opts
        with torch.no_grad():
            ys = solve(func, y0, t, _norm(state_bounds, per_member, skip), jump_t)
        ctx.func, ctx.t, ctx.solve, ctx.opts = func, t, solve, opts
        ctx.save_for_backward(ys, *params)
        return ys

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor) -> tuple:
        ys, *params = ctx.saved_tensors
        func, t, solve, (seminorm, jump_t, state_bounds, per_member, skip) = ctx.func, ctx.t, ctx.solve, ctx.opts
        reversed_jumps = None if jump_t is None else sorted(-j for j in jump_t)
        lead = tuple(ys.shape[1:2]) if per_member else ()  # (K,): one augmented state per row
        n_rows = lead[0] if lead else 1
        shape, n = ys.shape[1:], ys[0].numel() // n_rows
        sizes = [p.numel() // n_rows for p in params]
        # z's components, then a's (the same split), then each parameter's a_θ (unless seminorm)
        bounds = list(state_bounds) + [n + b for b in state_bounds[1:]]
        if not seminorm:
            bounds += [2 * n + sum(sizes[: i + 1]) for i in range(len(sizes))]
        parts = len(state_bounds) - 1  # a's segments follow z's: a part left out leaves its adjoint out too
        norm = _norm(bounds, per_member, (*skip, *(parts + i for i in skip)))

        def reversed_augmented(tau: torch.Tensor, state: torch.Tensor, rows: torch.Tensor | None = None
                               ) -> torch.Tensor:
            """d[z, a, a_θ]/dτ at τ = -s (so the backward solve runs forward in τ); ``rows``: the members
            ``state`` holds (per member, where ``func`` takes them)."""
            held = state.shape[:1] if per_member else ()  # the members this evaluation holds
            part_shape = (*held, *shape[1:]) if per_member else shape
            z = state[..., :n].reshape(part_shape).detach().requires_grad_(True)
            a = state[..., n : 2 * n].reshape(part_shape)
            with torch.enable_grad():
                f = func(-tau, z) if rows is None else func(-tau, z, rows)
                # a field that depends on neither z nor a parameter (torchdiffeq's "exp" problem)
                # has no graph to differentiate: every vector-Jacobian product is zero
                if f.requires_grad:
                    # retain_graph: a field may reuse, across an attempt's stages, a part of its graph built
                    # once (the ensemble's selection of the unfinished members' parameters); it is freed with f
                    vjps = torch.autograd.grad(f, (z, *params), a, allow_unused=True, retain_graph=rows is not None)
                else:
                    vjps = (None,) * (1 + len(sizes))
            if rows is not None:  # the parameters' gradients are (K, ...): these members' rows
                vjps = (vjps[0], *(None if v is None else v.index_select(0, rows) for v in vjps[1:]))
            parts = [f.reshape(*held, -1).neg()] + [
                v.reshape(*held, -1) if v is not None else torch.zeros((*held, size), dtype=state.dtype,
                                                                       device=state.device)
                for v, size in zip(vjps, [n, *sizes])
            ]  # zeros only for what f does not depend on (allocated per evaluation, so never when not needed)
            return torch.cat(parts, dim=-1)

        a = grad_ys[-1]
        a_params = torch.zeros((*lead, sum(sizes)), dtype=ys.dtype, device=ys.device)
        with torch.no_grad():
            for i in range(len(t) - 1, 0, -1):
                state = torch.cat([ys[i].reshape(*lead, -1), a.reshape(*lead, -1), a_params], dim=-1)
                state = solve(reversed_augmented, state, [-t[i], -t[i - 1]], norm, reversed_jumps)[-1]
                a = state[..., n : 2 * n].reshape(shape) + grad_ys[i - 1]
                a_params = state[..., 2 * n :]
        grads = [g.reshape(p.shape) for g, p in zip(a_params.split(sizes, dim=-1), params)]
        return (None, None, None, None, a, *grads)


def _norm(bounds: list[int], per_member: bool, skip: tuple[int, ...] = ()) -> Callable:
    """The error norm over the components at ``bounds`` but ``skip``: a float, or each row's ``(K,)`` when
    ``per_member``."""
    return member_rms_norm(bounds, skip) if per_member else max_rms_norm(bounds, skip)


def _apply(
    func: Field,
    y0: torch.Tensor,
    t: list[float],
    solve: Solve,
    params: Sequence[torch.Tensor],
    seminorm: bool,
    jump_t: list[float] | None,
    state_bounds: list[int] | None,
    per_member: bool = False,
    skip: tuple[int, ...] = (),
) -> torch.Tensor:
    params = tuple(p for p in params if p.requires_grad)
    width = y0.shape[1] if per_member else y0.numel()
    if per_member and any(p.shape[:1] != y0.shape[:1] for p in params):
        raise ValueError(f"a per-member adjoint needs every parameter to lead with the {y0.shape[0]} members")
    bounds = [0, width] if state_bounds is None else list(state_bounds)
    return _Adjoint.apply(func, t, solve, (seminorm, jump_t, bounds, per_member, skip), y0, *params)


def adaptive_adjoint(
    tableau: Tableau,
    func: Field,
    y0: torch.Tensor,
    t: list[float],
    rtol: float,
    atol: float,
    max_num_steps: int,
    params: Sequence[torch.Tensor],
    seminorm: bool = True,
    jump_t: list[float] | None = None,
    state_bounds: list[int] | None = None,
    member_nfe: list[int] | None = None,
    member_subsets: bool = False,
    skip: tuple[int, ...] = (),
) -> torch.Tensor:
    """Integrate with the adaptive pair ``tableau`` (:func:`nodex.ode.lean.runge_kutta.adaptive_rk`);
    gradients by the adjoint method, the backward solve with the same pair and tolerances.

    Args:
        func: ``f(s, z)``; evaluated once per stage forward and once (with a VJP) per stage
            of the backward solve.
        y0: ``(B, ...)``; t: increasing output depths.
        params: the tensors to differentiate (those that do not require grad are left out).
        seminorm: control the backward step on ``z`` and ``a`` only (Kidger et al. 2021).
        jump_t: discontinuities of ``f`` in depth; the backward solve restarts there too.
        state_bounds: offsets of the components of a flattened tuple state in ``y0``'s
            flattening (the error norm is the largest RMS over them); ``None``: one component.
        member_nfe: ``K`` counts: ``y0`` is ``(K, M)``, ``K`` independent rows solved forward and backward with
            their own steps (:func:`nodex.ode.lean.member_steps.adaptive_rk_members`, ``s`` ``(K,)``; every
            parameter leads with ``K``; ``state_bounds`` are offsets in a row), each count increased by its row's
            evaluations. ``None``: one solve of the whole state. ``member_subsets``: ``func`` takes ``f(s, z, rows)``
            for the unfinished members only (:func:`~nodex.ode.lean.member_steps.adaptive_rk_members`' ``subsets``).
        skip: indices of ``state_bounds``' components left out of the error norm, forward and (with
            their adjoints) backward: integrals the dynamics never read, such as a regulariser's.

    Returns:
        ``(len(t), B, ...)`` states at ``t`` (``(len(t), K, M)`` per member).
    """

    def solve(f: Field, y: torch.Tensor, ts: list[float], norm: Norm, jumps: list[float] | None) -> torch.Tensor:
        if member_nfe is not None:
            return adaptive_rk_members(tableau, f, y, ts, rtol, atol, max_num_steps, norm, jumps, member_nfe,
                                       member_subsets)
        return adaptive_rk(tableau, f, y, ts, rtol, atol, max_num_steps, norm, jumps)

    return _apply(func, y0, t, solve, params, seminorm, jump_t, state_bounds, member_nfe is not None, tuple(skip))


def dopri5_adjoint(
    func: Field, y0: torch.Tensor, t: list[float], *args: Any, step_rule: str = "auto", **kwargs: Any
) -> torch.Tensor:
    """:func:`adaptive_adjoint` with Dormand–Prince 5(4), forward and backward solves taking their first and last
    steps by ``step_rule``; ``(len(t), B, ...)`` states at ``t``."""
    return adaptive_adjoint(with_step_rule(DOPRI5, step_rule), func, y0, t, *args, **kwargs)


def tsit5_adjoint(
    func: Field, y0: torch.Tensor, t: list[float], *args: Any, step_rule: str = "auto", **kwargs: Any
) -> torch.Tensor:
    """:func:`adaptive_adjoint` with Tsitouras 5(4) (steps as :func:`dopri5_adjoint`'s); ``(len(t), B, ...)``."""
    return adaptive_adjoint(with_step_rule(TSIT5, step_rule), func, y0, t, *args, **kwargs)


def fixed_grid_adjoint(
    func: Field,
    y0: torch.Tensor,
    t: list[float],
    step_size: float,
    method: str,
    dtype: torch.dtype,
    params: Sequence[torch.Tensor],
    jump_t: list[float] | None = None,
) -> torch.Tensor:
    """Integrate with :func:`nodex.ode.lean.fixed_grid.fixed_grid`; gradients by the adjoint method,
    the backward solve on the same kind of grid over each reversed output interval (as torchdiffeq's),
    with its nodes on the reversed ``jump_t``.

    Args:
        func, y0, t, params: as for :func:`dopri5_adjoint`; ``y0``: ``(B, ...)``.
        step_size, method, dtype: as for :func:`nodex.ode.lean.fixed_grid.fixed_grid`.
        jump_t: discontinuities of ``f`` in depth (nodes of the forward and the backward grid).

    Returns:
        ``(len(t), B, ...)`` states at ``t``.
    """

    def solve(f: Field, y: torch.Tensor, ts: list[float], norm: Norm, jumps: list[float] | None) -> torch.Tensor:
        return fixed_grid(f, y, ts, step_size, method, dtype, jumps)

    return _apply(func, y0, t, solve, params, True, jump_t, None)
