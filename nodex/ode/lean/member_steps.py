"""Per-member adaptive steps: ``K`` independent problems (a seed ensemble's members) in one batched solve.

:func:`adaptive_rk_members` is :func:`nodex.ode.lean.runge_kutta.adaptive_rk` for a state ``(K, M)`` whose rows
are ``K`` separate problems: each row has its own error norm, step size, accept/reject, step count, output
interpolation and ``jump_t`` restarts, as torchode steps each sample. Every decision is made on the host in
double precision with the scalar driver's formulas, and every coefficient enters the arithmetic as the scalar
driver rounds it (``c · dt`` in double, then the state's dtype), so row ``k`` takes the steps, and gets the
values (to the order the reductions sum in), of the scalar solve of row ``k`` alone.

The field is evaluated for all rows at once, with per-row depths ``s`` of shape ``(K,)``. A row that has reached
the last output depth stops (its step is 0 and its state is kept) while the others go on, and a rejected row keeps
its state; both are still evaluated (one batched call), but only rows that were integrating are counted in ``nfe``
(each row's count is what its own solve would count: 2 to start, one per stage of every attempt, one after each
jump). Under autograd the attempts in which some row accepted stay in the graph for every row (a masked select),
so the backward pass runs through each such attempt once for all rows.
"""

from __future__ import annotations

import math
from typing import Callable, Collection, NamedTuple

import torch

from nodex.ode.lean.runge_kutta import (
    STEP_RULES, Tableau, checked_segments, factored_weights, quartic_fit, step_end, step_factor,
)

# f(s, y): s (K,) per-row depths, y (K, M) -> (K, M)
MemberField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (K, M) scaled error -> (K,) per-row norms
MemberNorm = Callable[[torch.Tensor], torch.Tensor]
Terms = tuple[tuple[int, int], ...]  # (stage j, coefficient index) of the nonzero weights of one combination


def member_rms_norm(bounds: list[int], skip: Collection[int] = ()) -> MemberNorm:
    """Per row of ``(K, M)``: the largest RMS over the column segments ``[bounds[i], bounds[i+1])`` but those in
    ``skip`` (one segment: the RMS of the row) — :func:`nodex.ode.lean.runge_kutta.max_rms_norm` of each row."""
    if len(bounds) <= 2 and not skip:
        return lambda x: x.pow(2).mean(dim=1).sqrt()
    segments = checked_segments(bounds, skip)

    def norm(x: torch.Tensor) -> torch.Tensor:
        squares = x.pow(2)
        means = [squares[:, a:b].mean(dim=1) for a, b in segments]
        return torch.stack(means, dim=1).amax(dim=1).sqrt()

    return norm


class _Layout(NamedTuple):
    """A tableau's weights as one coefficient vector, and per combination which stages use which entry."""

    rows: tuple[Terms, ...]  # the stage rows of tab.a, then the solution weights
    error: Terms
    mid: Terms
    coeffs: torch.Tensor  # float64 (n,)
    c: torch.Tensor  # float64: the stage depths' fractions


_LAYOUTS: dict[Tableau, _Layout] = {}


def _layout(tab: Tableau) -> _Layout:
    layout = _LAYOUTS.get(tab)
    if layout is None:
        values: list[float] = []

        def terms(weights: tuple[float, ...] | None) -> Terms:
            out = []
            for j, c in enumerate(weights or ()):
                if c != 0.0:
                    out.append((j, len(values)))
                    values.append(c)
            return tuple(out)

        rows = tuple(terms(row) for row in tab.a)
        layout = _Layout(rows, terms(tab.e), terms(tab.mid), torch.tensor(values, dtype=torch.float64),
                         torch.tensor(tab.c, dtype=torch.float64))
        _LAYOUTS[tab] = layout
    return layout


def combine_members(y0: torch.Tensor | None, ks: list[torch.Tensor], terms: Terms, alphas: torch.Tensor
                    ) -> torch.Tensor:
    """``y0 + Σ alphas[i] · ks[j]`` over ``terms`` (``y0=None``: the sum); ``alphas`` ``(n, K, 1)``: each
    coefficient times each row's step, in the state's dtype."""
    out = None
    for j, i in terms:
        if out is None:
            out = ks[j] * alphas[i] if y0 is None else torch.addcmul(y0, ks[j], alphas[i])
        else:
            out.addcmul_(ks[j], alphas[i])
    assert out is not None
    return out


def _as_state(values: list[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Host doubles -> the state's dtype and device (rounded once, as the scalar driver's Python floats are)."""
    host = values if torch.is_tensor(values) else torch.tensor(values, dtype=torch.float64)
    return host.to(dtype=like.dtype, device=like.device)


def _initial_steps(func: MemberField, t0: float, y0: torch.Tensor, f0: torch.Tensor, rtol: float, atol: float,
                   norm: MemberNorm, order: int) -> list[float]:
    """:func:`nodex.ode.lean.runge_kutta.initial_step` for every row: one batched evaluation."""
    with torch.no_grad():
        scale = y0.abs().mul(rtol).add_(atol)
        d0s, d1s = torch.stack([norm(y0 / scale), norm(f0 / scale)]).tolist()
        h0s = [1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1 for d0, d1 in zip(d0s, d1s)]
        h0 = torch.tensor(h0s, dtype=torch.float64)
        f1 = func(_as_state(t0 + h0, y0), y0 + _as_state(h0, y0).unsqueeze(1) * f0)
        d2s = norm((f1 - f0) / scale).tolist()
    steps = []
    for h0_k, d1, d2 in zip(h0s, d1s, d2s):
        d2 = d2 / h0_k
        if d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0_k * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
        steps.append(min(100 * h0_k, h1))
    return steps


class _Rows:
    """The host bookkeeping of every row: depth, next step, attempts in this output interval, next output."""

    def __init__(self, K: int, t: list[float], dt: list[float], counts: list[int]) -> None:
        self.t, self.t0, self.dt, self.counts = t, [t[0]] * K, dt, counts
        self.n_steps, self.next_out = [0] * K, [1] * K
        self.count(list(range(K)), [True] * K, 2)  # the first slope and the initial-step probe

    def count(self, part: list[int], which: list[bool], evaluations: int = 1) -> None:
        for k, w in zip(part, which):
            self.counts[k] += evaluations * w

    def active(self) -> list[bool]:
        return [j < len(self.t) for j in self.next_out]

    def plan(self, k: int, y: torch.Tensor, max_num_steps: int, jumps: list[float], land: float | None
             ) -> tuple[float, float, bool]:
        """Row ``k``'s next trial step ``(t1, dt, on a jump)``, with the scalar driver's checks."""
        assert self.n_steps[k] < max_num_steps, f"max_num_steps exceeded ({self.n_steps[k]}>={max_num_steps})"
        self.n_steps[k] += 1
        t0, dt = self.t0[k], self.dt[k]
        if not math.isfinite(dt):
            assert bool(torch.isfinite(y[k]).all()), "non-finite values in state `y`"
            dt = 0.0
        assert t0 + dt > t0, f"underflow in dt {dt}"
        return step_end(t0, dt, jumps, land)

    def plans(self, part: list[int], y: torch.Tensor, max_num_steps: int, jumps: list[float], land: float | None
              ) -> tuple[list[float], list[float], list[bool]]:
        """The next trial step of every row of ``part``: ends, sizes and whether each ends on a jump (a finished
        row: a step of 0)."""
        plans = [self.plan(k, y, max_num_steps, jumps, land) if self.next_out[k] < len(self.t)
                 else (self.t0[k], 0.0, False) for k in part]
        return [p[0] for p in plans], [p[1] for p in plans], [p[2] for p in plans]

    def judge(self, part: list[int], ratios: list[float], dts: list[float], y: torch.Tensor, stages: int
              ) -> list[bool]:
        """Which rows of ``part`` (by position) accept their trial step (error ratio ≤ 1); every active one's next
        step size and count."""
        accepted = [False] * len(part)
        for i, k in enumerate(part):
            if self.next_out[k] >= len(self.t):  # finished: not integrating
                continue
            self.counts[k] += stages
            ratio = ratios[i]
            if not math.isfinite(ratio):  # a stage blew up: retry smaller
                assert bool(torch.isfinite(y[k]).all()), "non-finite values in state `y`"
                ratio = math.inf
            accepted[i] = ratio <= 1.0
            self.dt[k] = dts[i] * step_factor(ratio)
        return accepted

    def advance(self, part: list[int], accepted: list[bool], t1s: list[float], dts: list[float]
                ) -> dict[int, dict[int, float]]:
        """Move the accepting rows of ``part`` to their step's end: the outputs each has now passed, as ``{output
        index: {position in part: fraction of its step}}``; a row's attempt count restarts with each output."""
        crossings: dict[int, dict[int, float]] = {}
        for i, k in ((i, k) for i, k in enumerate(part) if accepted[i]):
            t_start, self.t0[k] = self.t0[k], t1s[i]
            while self.next_out[k] < len(self.t) and self.t[self.next_out[k]] <= self.t0[k]:
                crossings.setdefault(self.next_out[k], {})[i] = (self.t[self.next_out[k]] - t_start) / dts[i]
                self.next_out[k] += 1
                self.n_steps[k] = 0
        return crossings


class _Part:
    """The rows one attempt computes: all ``K`` (``index`` ``None``), or — once some have finished, for a field that
    takes them — only the active ones, ``index`` their row numbers: ``take`` reads them, ``put`` writes them back."""

    def __init__(self, rows: list[int], K: int, device: torch.device) -> None:
        self.rows, self.size = rows, K
        self.index = None if len(rows) == K else torch.tensor(rows, device=device)

    def take(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.index is None else x.index_select(0, self.index)

    def put(self, full: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        return part if self.index is None else full.index_copy(0, self.index, part)

    def merge(self, full: torch.Tensor | None, chosen: list[bool], part: torch.Tensor) -> torch.Tensor:
        """``full`` (``None``: not yet written) with the rows of this part where ``chosen`` replaced by ``part``'s."""
        if full is None:
            return self.put(part.new_zeros((self.size, *part.shape[1:])), part)
        return self.put(full, _select(chosen, part, self.take(full)))

    def field(self, func: Callable[..., torch.Tensor]) -> MemberField:
        return func if self.index is None else (lambda s, y: func(s, y, self.index))


def adaptive_rk_members(
    tab: Tableau,
    func: MemberField,
    y0: torch.Tensor,
    t: list[float],
    rtol: float,
    atol: float,
    max_num_steps: int,
    norm: MemberNorm,
    jump_t: list[float] | None = None,
    nfe: list[int] | None = None,
    subsets: bool = False,
) -> torch.Tensor:
    """Integrate the ``K`` rows of ``y0`` ``(K, M)`` with the pair ``tab``, each row with its own steps.

    Args:
        func: ``f(s, y)``; ``s`` ``(K,)`` each row's depth (the state's dtype), ``y`` ``(K, M)``.
        t, rtol, atol, max_num_steps, jump_t: as for :func:`nodex.ode.lean.runge_kutta.adaptive_rk`, per row.
        norm: per row of the scaled error (:func:`member_rms_norm`); a row accepts at ≤ 1.
        nfe: ``K`` counts, each increased by the evaluations in which its row was integrating.
        subsets: ``func`` also takes ``f(s, y, rows)``: ``y`` and ``s`` hold only the rows numbered by the index
            tensor ``rows``. Once some rows have finished, the others are then evaluated alone.

    Returns ``(len(t), K, M)``, every row's state at every depth of ``t``. Raises ``AssertionError`` (the scalar
    driver's messages) on a row's step-size underflow, too many steps or non-finite state.
    """
    K = y0.shape[0]
    land_on_end, order = STEP_RULES[tab.step_rule]
    layout = _layout(tab)
    k1 = func(_as_state([t[0]] * K, y0), y0)
    rows = _Rows(K, t, _initial_steps(func, t[0], y0, k1, rtol, atol, norm, order),
                 nfe if nfe is not None else [0] * K)  # 2 evaluations each
    jumps = sorted(j for j in (jump_t or ()) if j > t[0])
    land = t[-1] if land_on_end else None
    y, outputs = y0, [y0] + [None] * (len(t) - 1)
    while any(active := rows.active()):
        part = _Part([k for k in range(K) if active[k]] if subsets else list(range(K)), K, y.device)
        t1s, dts, on_jump = rows.plans(part.rows, y, max_num_steps, jumps, land)
        table = _step_table(layout, [rows.t0[k] for k in part.rows], dts, t1s, y)
        t_end = table[len(tab.c)]
        if jumps:  # stages on the step's end see the piece before it
            t_end = torch.nextafter(t_end, t_end - 1)
        alphas, f, y_part = table[len(tab.c) + 1:].unsqueeze(-1), part.field(func), part.take(y)
        y1, ks, ratios = _attempt(tab, layout, f, y_part, part.take(k1), table, t_end, alphas, rtol, atol, norm)
        accepted = rows.judge(part.rows, ratios, dts, y, len(tab.c) + 1)
        if not any(accepted):
            continue
        y_new, k1_new = _select(accepted, y1, y_part), _select(accepted, ks[-1], part.take(k1))
        jumped = [a and j for a, j in zip(accepted, on_jump)]
        if any(jumped):  # restart on the far side of the discontinuity: one more evaluation each
            after = table[len(tab.c)]
            k1_new = _select(jumped, f(torch.nextafter(after, after + 1), y_new), k1_new)
            rows.count(part.rows, jumped)
        y, k1 = part.put(y, y_new), part.put(k1, k1_new)
        for j, xs in rows.advance(part.rows, accepted, t1s, dts).items():
            value = _dense(tab, layout, y_part, y1, ks, alphas, dts, [xs.get(i, 1.0) for i in range(len(dts))])
            outputs[j] = part.merge(outputs[j], [i in xs for i in range(len(dts))], value)
    return torch.stack(outputs)


def _step_table(layout: _Layout, t0s: list[float], dts: list[float], t1s: list[float],
                like: torch.Tensor) -> torch.Tensor:
    """``(n_c + 1 + n_coeffs, K)`` in the state's dtype: each row's stage depths ``t0 + c·dt``, its step's end
    ``t1``, then every tableau coefficient times its ``dt`` — computed in double, rounded once, as the scalar
    driver's Python floats are."""
    host = torch.tensor([t0s, dts, t1s], dtype=torch.float64)
    depths = host[0] + layout.c[:, None] * host[1]
    return _as_state(torch.cat([depths, host[2:], layout.coeffs[:, None] * host[1]]), like)


def _attempt(tab: Tableau, layout: _Layout, func: MemberField, y: torch.Tensor, k1: torch.Tensor,
             table: torch.Tensor, t_end: torch.Tensor, alphas: torch.Tensor, rtol: float, atol: float,
             norm: MemberNorm) -> tuple[torch.Tensor, list[torch.Tensor], list[float]]:
    """One trial step of every row: ``(y1, stages, each row's error ratio)``; ``table[i]`` the depths of stage
    ``i + 2``."""
    ks = [k1]
    for i, (ci, terms) in enumerate(zip(tab.c, layout.rows)):
        ks.append(func(t_end if ci == 1.0 else table[i], combine_members(y, ks, terms, alphas)))
    y1 = combine_members(y, ks, layout.rows[-1], alphas)
    ks.append(func(t_end, y1))  # first-same-as-last: k1 of the next step
    with torch.no_grad():
        error = combine_members(None, ks, layout.error, alphas)
        tol = torch.maximum(y.abs(), y1.abs()).mul_(rtol).add_(atol)
        ratios = norm(error.div_(tol)).tolist()
    return y1, ks, ratios


def _select(rows: list[bool], chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``chosen``'s rows where ``rows`` is true, else ``other``'s."""
    if all(rows):
        return chosen
    mask = torch.tensor(rows, device=chosen.device).unsqueeze(1)
    return torch.where(mask, chosen, other)


def _dense(tab: Tableau, layout: _Layout, y0: torch.Tensor, y1: torch.Tensor, ks: list[torch.Tensor],
           alphas: torch.Tensor, dts: list[float], xs: list[float]) -> torch.Tensor:
    """Every row's dense output at the fraction ``xs[k]`` of its step ``dts[k]`` (``y1``'s row where it is 1)."""
    if all(x == 1.0 for x in xs):
        return y1
    if tab.mid is not None:
        dt_x = _as_state([dts, xs], y0).unsqueeze(-1)
        value = quartic_fit(y0, y1, ks, dt_x[0], dt_x[1], combine_members(y0, ks, layout.mid, alphas))
    else:
        assert tab.dense is not None, "a Tableau needs its dense output: mid or dense"
        weights = [factored_weights(tab.dense, x) for x in xs]
        scaled = _as_state([[w[i] * dt for w, dt in zip(weights, dts)] for i in range(len(ks))], y0).unsqueeze(-1)
        value = combine_members(y0, ks, tuple((i, i) for i in range(len(ks))), scaled)
    return _select([x != 1.0 for x in xs], value, y1)
