"""The solve wrapper: validated solver settings, NFE counting and typed failures.

Every model integrates through :func:`odesolve`. A dynamics function is any callable
``f(s, z) -> dz/ds`` (an ``nn.Module`` or a plain function), where ``z`` is a tensor or a tuple
of tensors. :class:`NFECounter` wraps it and counts calls, so the training loop can read the
forward NFE after the forward pass and the backward NFE (adjoint only) after backward.
"""

from __future__ import annotations

import math

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint
from torchdiffeq._impl.odeint import SOLVERS

from nodex.config import SolverSchema
from nodex.errors import SolverError
from nodex.ode.lean.adjoint import adaptive_adjoint, dopri5_adjoint, fixed_grid_adjoint, tsit5_adjoint
from nodex.ode.lean.dopri5 import DOPRI5, dopri5, max_rms_norm
from nodex.ode.lean.fixed_grid import LEAN_FIXED_METHODS, fixed_grid
from nodex.ode.lean.member_steps import adaptive_rk_members, member_rms_norm
from nodex.ode.lean.runge_kutta import STEP_RULES, with_step_rule
from nodex.ode.lean.tsit5 import TSIT5, tsit5
from nodex.ode.lean.tuples import (
    FlatDynamics, MemberFlatDynamics, flatten_members, flatten_state, unflatten_members, unflatten_solution,
)

FIXED_STEP_METHODS = frozenset(
    {"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams"}
)
NODEX_METHODS = ("tsit5",)  # nodex's own: no torchdiffeq counterpart
LEAN_ADAPTIVE_METHODS = ("dopri5", "tsit5")
PAIRS = {"dopri5": DOPRI5, "tsit5": TSIT5}  # their coefficient tables
SENSITIVITIES = ("autograd", "adjoint")
ENGINES = ("auto", "torchdiffeq")
STEP_RULE_CHOICES = ("auto", *STEP_RULES)  # auto: torchdiffeq's for dopri5, hairer for tsit5


def available_methods() -> list[str]:
    """Names of every method the installed torchdiffeq supports (``scipy_solver`` excluded:
    it cannot backpropagate), and nodex's own (``tsit5``)."""
    return sorted({*(m for m in SOLVERS if m != "scipy_solver"), *NODEX_METHODS})


@dataclass(frozen=True)
class SolverSettings:
    """How to integrate: method, tolerances, fixed step, sensitivity, engine, step rule (the interval is the
    caller's). ``step_rule`` (nodex's dopri5 and tsit5): how the first and last steps are taken, ``torchdiffeq``
    (dopri5's ``auto``: torchdiffeq's steps) or ``hairer`` (tsit5's ``auto``: torchdyn's steps); see
    :data:`nodex.ode.lean.runge_kutta.STEP_RULES`.

    Raises ``ValueError`` on construction when a value is invalid, naming the argument
    (``rtol=0.0 must be positive ...``); the config builder prefixes the ``solver`` key.
    """

    # The defaults are the config's (one place: nodex.config.SolverSchema).
    method: str = SolverSchema.method
    rtol: float = SolverSchema.rtol
    atol: float = SolverSchema.atol
    step_size: float | None = SolverSchema.step_size
    max_num_steps: int = SolverSchema.max_num_steps
    sensitivity: str = SolverSchema.sensitivity
    seminorm: bool = SolverSchema.seminorm
    options: dict = field(default_factory=dict)
    engine: str = SolverSchema.engine
    step_rule: str = SolverSchema.step_rule

    def __post_init__(self) -> None:
        methods = available_methods()
        if self.method not in methods:
            raise ValueError(
                f"method={self.method!r} is not a torchdiffeq method; choose one of: {', '.join(methods)}"
            )
        for key in ("rtol", "atol"):
            value = getattr(self, key)
            if not value > 0:
                raise ValueError(f"{key}={value} must be positive (e.g. {key}=1e-4)")
            if not math.isfinite(value):  # an infinite tolerance accepts any step: no error control at all
                raise ValueError(f"{key}={value} must be finite (e.g. {key}=1e-4)")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"step_size={self.step_size} must be positive (e.g. step_size=0.1) or null")
        if self.step_size is not None and not math.isfinite(self.step_size):
            raise ValueError(f"step_size={self.step_size} must be finite (e.g. step_size=0.1; one step: the depth)")
        if self.is_fixed_step and self.step_size is None:
            raise ValueError(f"method={self.method} is a fixed-step method: set its step_size (e.g. 0.1)")
        if self.max_num_steps <= 0:
            raise ValueError(f"max_num_steps={self.max_num_steps} must be a positive integer")
        if self.sensitivity not in SENSITIVITIES:
            raise ValueError(f"sensitivity={self.sensitivity!r}; choose one of: {', '.join(SENSITIVITIES)}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r}; choose one of: {', '.join(ENGINES)}")
        if self.engine == "torchdiffeq" and self.method in NODEX_METHODS:
            raise ValueError(f"engine=torchdiffeq has no method {self.method} (it is nodex's own): set engine=auto")
        self._check_step_rule()

    def _check_step_rule(self) -> None:
        if self.step_rule not in STEP_RULE_CHOICES:
            raise ValueError(f"step_rule={self.step_rule!r}; choose one of: {', '.join(STEP_RULE_CHOICES)}")
        if self.step_rule != "auto" and self.method not in LEAN_ADAPTIVE_METHODS:
            raise ValueError(
                f"step_rule={self.step_rule} applies to nodex's {' and '.join(LEAN_ADAPTIVE_METHODS)} only, "
                f"not method={self.method}: set step_rule=auto"
            )
        if self.step_rule == "hairer" and self.engine == "torchdiffeq":
            raise ValueError("step_rule=hairer needs nodex's engine (torchdiffeq takes its own steps): set engine=auto")

    @property
    def is_fixed_step(self) -> bool:
        return self.method in FIXED_STEP_METHODS

    @property
    def own_adaptive(self) -> bool:
        """Whether adaptive solves run on nodex's own engine: dopri5 or tsit5, ``engine=auto``, no extra options."""
        return self.method in LEAN_ADAPTIVE_METHODS and self.engine == "auto" and not self.options

    @property
    def per_member_steps(self) -> bool:
        """Whether :func:`odesolve` with ``per_member=True`` (a seed ensemble) gives each member its own adaptive
        steps: on nodex's own engine (:attr:`own_adaptive`). Other adaptive methods share one step sequence; fixed
        grids need none (each member's computation is its own run's)."""
        return self.own_adaptive

    def describe(self) -> str:
        """Short human description used in error messages."""
        if self.is_fixed_step:
            return f"{self.method} step_size={self.step_size}"
        rule = "" if self.step_rule == "auto" else f" step_rule={self.step_rule}"
        return f"{self.method} rtol={self.rtol} atol={self.atol}{rule}"

    def solver_options(self, jump_t: torch.Tensor | None = None) -> dict[str, Any]:
        opts: dict[str, Any] = dict(self.options)
        if self.is_fixed_step:
            opts["step_size"] = self.step_size
        else:
            opts["max_num_steps"] = self.max_num_steps
            if jump_t is not None:
                opts["jump_t"] = jump_t
        return opts


class NFECounter:
    """A mutable count of dynamics evaluations (a plain int: no device sync). ``members``: each member's own count
    where a per-member solve (:func:`odesolve` with ``per_member=True``) recorded them, else ``None``."""

    def __init__(self) -> None:
        self.count = 0
        self.members: list[int] | None = None

    def reset(self) -> None:
        self.count = 0
        self.members = None

    def member_counts(self, size: int) -> list[int]:
        """The ``size`` members' counts: their own where recorded, else each the shared count."""
        return list(self.members) if self.members is not None else [self.count] * size

    def _members_to_count(self, size: int) -> list[int]:
        if self.members is None:
            self.members = [0] * size
        return self.members


class CountedDynamics(nn.Module):
    """Wraps ``f(s, z)`` so every call increments ``counter``; its parameters are ``f``'s."""

    def __init__(self, dynamics: nn.Module, counter: NFECounter) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.counter = counter
        self.takes_member_rows = bool(getattr(dynamics, "takes_member_rows", False))

    def forward(self, s: torch.Tensor, z: Any, *rows: torch.Tensor) -> Any:
        self.counter.count += 1
        return self.dynamics(s, z, *rows)


class FunctionDynamics(nn.Module):
    """A plain function ``f(s, z)`` as a module without parameters: the adjoint asks its dynamics for them."""

    def __init__(self, function: Callable[..., Any]) -> None:
        super().__init__()
        self.function = function

    def forward(self, s: torch.Tensor, z: Any, *rows: torch.Tensor) -> Any:
        return self.function(s, z, *rows)


def odesolve(
    dynamics: nn.Module | Callable[..., Any],
    z0: torch.Tensor | tuple[torch.Tensor, ...],
    s: torch.Tensor,
    settings: SolverSettings,
    *,
    counter: NFECounter | None = None,
    jump_t: torch.Tensor | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    per_member: bool = False,
    quadratures: int = 0,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Integrate ``dz/ds = dynamics(s, z)`` from ``z0`` over the depths ``s``.

    Args:
        dynamics: module or function ``f(s, z)``; ``s`` is a 0-d tensor, ``z`` shaped like ``z0``.
        z0: initial state, ``(B, ...)`` or a tuple of such tensors.
        s: 1-D increasing (or decreasing) depths, ``(T,)``; ``s[0]`` is where ``z0`` holds.
        settings: method, tolerances, sensitivity.
        counter: incremented once per dynamics evaluation.
        jump_t: depths where the field is discontinuous: adaptive solvers restart there, nodex's
            fixed grids (euler / midpoint / rk4) put nodes there; ``(J,)``.
        adjoint_params: tensors to differentiate under the adjoint (default: ``dynamics``'
            parameters); pass extra tensors the field closes over (e.g. a control signal).
        per_member: ``z0``'s leading dimension indexes ``K`` independent problems (a seed ensemble's members):
            where :attr:`SolverSettings.per_member_steps`, each takes its own steps at depths ``s`` ``(K,)``,
            with its own count in ``counter.members`` (:mod:`nodex.ode.lean.member_steps`). A ``dynamics``
            with ``takes_member_rows`` is also called ``dynamics(s, z, rows)`` on the unfinished members only.
        quadratures: the last parts of a tuple ``z0`` that are integrals ``dynamics`` never reads (a regulariser's):
            integrated at every stage, but left out of the adaptive error norm (forward and, under the adjoint,
            backward), so they ride on the steps the other parts choose — as CVODES' quadrature variables without
            error control. nodex's dopri5 and tsit5 only; torchdiffeq's engine controls every part.

    Returns:
        The states at ``s``: ``(T, B, ...)`` (a tuple of such for a tuple ``z0``).

    Raises:
        SolverError: torchdiffeq gave up (underflow in dt, max_num_steps, non-finite state).
    """
    if not isinstance(dynamics, nn.Module):
        dynamics = FunctionDynamics(dynamics)
    func = CountedDynamics(dynamics, counter) if counter is not None else dynamics
    params = None if adjoint_params is None else distinct(adjoint_params)
    lean = _lean_kind(settings, z0, s)
    if quadratures and lean is None and not settings.is_fixed_step:
        raise ValueError(f"quadratures={quadratures} need nodex's adaptive engine (dopri5 or tsit5, engine auto, no "
                         f"options, increasing depths), not {settings.describe()} on torchdiffeq's")
    if lean is None:
        if settings.method in NODEX_METHODS or settings.step_rule == "hairer":
            what = f"method={settings.method}" + (" step_rule=hairer" if settings.step_rule == "hairer" else "")
            raise SolverError(
                f"{what} runs on nodex's own engine only: it needs increasing constant "
                "depths, a tensor or tuple state and no solver options"
            )
        return _torchdiffeq_solve(func, z0, s, settings, jump_t, params)
    jumps = None if jump_t is None else [float(j) for j in host_depths(jump_t)]
    skip = unchecked_parts(z0, quadratures)
    if per_member and lean == "adaptive":
        return _member_adaptive(func, z0, host_depths(s), settings, jumps, params, counter, skip)
    return _lean_solve(func, z0, s, settings, lean, jumps, params, skip)


def unchecked_parts(z0: torch.Tensor | tuple[torch.Tensor, ...], quadratures: int) -> tuple[int, ...]:
    """The indices of ``z0``'s last ``quadratures`` parts (see :func:`odesolve`).

    Raises:
        ValueError: ``quadratures`` is negative or leaves no part of ``z0`` to control the steps.
    """
    parts = len(z0) if isinstance(z0, tuple) else 1
    if not 0 <= quadratures < parts:
        raise ValueError(f"quadratures={quadratures} must leave at least one of the state's {parts} part(s) "
                         "under error control")
    return tuple(range(parts - quadratures, parts))


def _lean_solve(
    func: nn.Module,
    z0: torch.Tensor | tuple[torch.Tensor, ...],
    s: torch.Tensor,
    settings: SolverSettings,
    lean: str,
    jumps: list[float] | None,
    params: tuple[torch.Tensor, ...] | None,
    skip: tuple[int, ...] = (),
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """One solve of the whole state on nodex's ``lean`` engine (``"fixed"`` or ``"adaptive"``; ``skip``: the parts
    left out of the adaptive error norm): ``(T, B, ...)`` (a tuple of such for a tuple ``z0``)."""
    shapes, bounds = None, None
    if isinstance(z0, tuple):  # one flat tensor, torchdiffeq's mixed norm over the parts
        func = FlatDynamics(func, [z.shape for z in z0])  # same parameters as func
        z0, shapes, bounds = flatten_state(z0)
    if settings.sensitivity == "adjoint" and params is None:
        params = tuple(func.parameters())
    t = host_depths(s)
    try:
        if lean == "fixed":
            grid = (t, settings.step_size, settings.method, s.dtype)
            if settings.sensitivity == "adjoint":
                ys = fixed_grid_adjoint(func, z0, *grid, params=params, jump_t=jumps)
            else:
                ys = fixed_grid(func, z0, *grid, jumps)
        else:
            ys = _lean_adaptive(func, z0, t, settings, jumps, params, bounds, skip)
    except AssertionError as exc:
        raise SolverError(_solver_message(str(exc), settings)) from None
    return ys if shapes is None else unflatten_solution(ys, shapes)


def _lean_adaptive(
    func: nn.Module,
    z0: torch.Tensor,
    t: list[float],
    settings: SolverSettings,
    jumps: list[float] | None,
    params: tuple[torch.Tensor, ...] | None,
    bounds: list[int] | None,
    skip: tuple[int, ...] = (),
) -> torch.Tensor:
    """nodex's dopri5 or tsit5 of a flat ``z0`` ``(N...)`` under either sensitivity: ``(T, N...)``."""
    args = (settings.rtol, settings.atol, settings.max_num_steps)
    rule = settings.step_rule
    if settings.sensitivity == "adjoint":
        adjoint = dopri5_adjoint if settings.method == "dopri5" else tsit5_adjoint
        return adjoint(
            func, z0, t, *args, params=params, seminorm=settings.seminorm, jump_t=jumps, state_bounds=bounds,
            step_rule=rule, skip=skip,
        )
    solver = dopri5 if settings.method == "dopri5" else tsit5
    return solver(func, z0, t, *args, norm=max_rms_norm(bounds or [], skip), jump_t=jumps, step_rule=rule)


def _member_adaptive(
    func: nn.Module,
    z0: torch.Tensor | tuple[torch.Tensor, ...],
    t: list[float],
    settings: SolverSettings,
    jumps: list[float] | None,
    params: tuple[torch.Tensor, ...] | None,
    counter: NFECounter | None,
    skip: tuple[int, ...] = (),
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """nodex's dopri5 or tsit5 of ``K`` members, each with its own steps, under either sensitivity (``skip``: the
    parts left out of the error norm): ``(T, K, ...)`` (a tuple of such for a tuple ``z0``)."""
    flat, shapes, bounds = flatten_members(z0)
    is_tuple = isinstance(z0, tuple)
    rows = MemberFlatDynamics(func, shapes, is_tuple)  # same parameters as func
    nfe = counter._members_to_count(flat.shape[0]) if counter is not None else [0] * flat.shape[0]
    tableau = with_step_rule(PAIRS[settings.method], settings.step_rule)
    args = (settings.rtol, settings.atol, settings.max_num_steps)
    subsets = rows.takes_member_rows
    try:
        if settings.sensitivity == "adjoint":
            params = tuple(rows.parameters()) if params is None else params
            ys = adaptive_adjoint(tableau, rows, flat, t, *args, params=params, seminorm=settings.seminorm,
                                  jump_t=jumps, state_bounds=bounds, member_nfe=nfe, member_subsets=subsets,
                                  skip=skip)
        else:
            norm = member_rms_norm(bounds, skip)
            ys = adaptive_rk_members(tableau, rows, flat, t, *args, norm, jumps, nfe, subsets)
    except AssertionError as exc:
        raise SolverError(_solver_message(str(exc), settings)) from None
    return unflatten_members(ys, shapes, is_tuple)


def _torchdiffeq_solve(
    func: nn.Module,
    z0: torch.Tensor | tuple[torch.Tensor, ...],
    s: torch.Tensor,
    settings: SolverSettings,
    jump_t: torch.Tensor | None,
    adjoint_params: tuple[torch.Tensor, ...] | None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """torchdiffeq's ``odeint`` / ``odeint_adjoint``: ``(T, B, ...)`` (a tuple for a tuple ``z0``)."""
    options = settings.solver_options(jump_t)
    kwargs = dict(rtol=settings.rtol, atol=settings.atol, method=settings.method, options=options)
    try:
        if settings.sensitivity == "adjoint":
            # jump_t too: the backward solve then also restarts at the jumps (torchdiffeq negates
            # them for the reversed time); without it a stacked model's backward solve steps across
            # the discontinuities: many more evaluations for a less accurate gradient.
            adjoint_options = dict(kwargs["options"])
            if settings.seminorm:
                adjoint_options["norm"] = "seminorm"
            params = tuple(func.parameters()) if adjoint_params is None else adjoint_params
            return odeint_adjoint(func, z0, s, adjoint_options=adjoint_options, adjoint_params=params, **kwargs)
        return odeint(func, z0, s, **kwargs)
    except AssertionError as exc:  # torchdiffeq reports numerical failures as bare assertions
        raise SolverError(_solver_message(str(exc), settings)) from None


def distinct(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``tensors`` without repeats (by identity, first occurrence kept). A leaf parameter the
    bound dynamics registers and the caller also passes as an extra tensor (e.g. a horizon that
    is an ``nn.Parameter``) would otherwise receive its adjoint gradient once per occurrence."""
    seen: set[int] = set()
    return tuple(t for t in tensors if not (id(t) in seen or seen.add(id(t))))


def _lean_kind(settings: SolverSettings, z0: Any, s: torch.Tensor) -> str | None:
    """Which of nodex's own solvers takes the solve: ``"adaptive"`` (dopri5, tsit5:
    :mod:`nodex.ode.lean.dopri5`, :mod:`nodex.ode.lean.tsit5`), ``"fixed"`` (euler / midpoint / rk4:
    :mod:`nodex.ode.lean.fixed_grid`), either sensitivity (:mod:`nodex.ode.lean.adjoint`), with
    or without ``jump_t``; ``None``: torchdiffeq's. They cover the common training solve: a tensor
    (or tuple-of-tensors) state over increasing constant depths, no extra torchdiffeq options."""
    if settings.engine != "auto" or not _plain_solve(settings, z0, s):
        return None
    if settings.method in LEAN_ADAPTIVE_METHODS:
        return "adaptive"
    return "fixed" if settings.method in LEAN_FIXED_METHODS else None


def _plain_solve(settings: SolverSettings, z0: Any, s: torch.Tensor) -> bool:
    """No extra torchdiffeq options, a tensor or tuple-of-tensors state, constant increasing depths."""
    if not (
        not settings.options
        and (isinstance(z0, torch.Tensor) or (isinstance(z0, tuple) and all(isinstance(z, torch.Tensor) for z in z0)))
        and not s.requires_grad
        and s.dim() == 1
        and len(s) >= 2
    ):
        return False
    t = host_depths(s)
    return all(b > a for a, b in zip(t, t[1:]))


# id(tensor) -> (weak reference, version, values); an entry leaves with its tensor. (A
# WeakKeyDictionary cannot hold tensors: its lookups compare keys with ==, elementwise here.)
_HOST_DEPTHS: dict[int, tuple[weakref.ref, int, list[float]]] = {}


def host_depths(s: torch.Tensor) -> list[float]:
    """The depths ``s`` as host floats. A device tensor's values are remembered per tensor object
    and version (an in-place change is a new version), so a model's depth buffer is read back once,
    not once per solve: no device sync in the solve, which a CUDA-graph capture requires."""
    return s.tolist() if s.device.type == "cpu" else remembered_tolist(s)


def remembered_tolist(s: torch.Tensor) -> list[float]:
    """``s.tolist()``, read once per tensor object and version (see :func:`host_depths`)."""
    key = id(s)
    entry = _HOST_DEPTHS.get(key)
    if entry is not None and entry[0]() is s and entry[1] == s._version:
        return entry[2]
    values = s.tolist()
    _HOST_DEPTHS[key] = (weakref.ref(s, lambda _, k=key: _HOST_DEPTHS.pop(k, None)), s._version, values)
    return values


def _solver_message(reason: str, settings: SolverSettings) -> str:
    reason = reason.split(":")[0].strip() if "non-finite" in reason else reason.strip()
    hint = "loosen solver.rtol/atol, lower trainer.optim.lr or set trainer.grad_clip"
    if "max_num_steps" in reason:
        hint = "raise solver.max_num_steps, loosen solver.rtol/atol or lower trainer.optim.lr"
    return f"solver failed ({reason}) with {settings.describe()}: {hint}"
