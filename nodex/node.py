"""A Neural ODE as plain as torchdyn's: ``dz/ds = f(z)`` (or ``f(s, z)``), ``z(0) = x``, output ``z(S)``.

    node = NeuralODE(nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)), sensitivity="adjoint")
    z_S = node(x)                                   # x's shape: (B, d), (B, C, H, W), ...
    zs = node.trajectory(x, torch.linspace(0, 1, 10))  # (10, *x.shape)
    node.nfe                                        # NFE(forward=..., backward=...) of the last call

No input layer, readout or control (the paper's composite is :class:`nodex.GeneralNeuralODE`); it solves with
:func:`nodex.odesolve` under :class:`nodex.SolverSettings` and counts with :class:`nodex.NFECounter`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import fields
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import nn

from nodex.ode import NFECounter, SolverSettings, odesolve

ACCEPTED = "a NeuralODE field is f(z) or f(s, z) (an nn.Module's forward or a function; s: the depth, a 0-d tensor)"
# SolverSettings fields **options may set (the others are NeuralODE arguments)
_SETTING_NAMES = frozenset(f.name for f in fields(SolverSettings)) - {"options", "method", "rtol", "atol",
                                                                     "step_size", "sensitivity"}
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def required_arguments(field: nn.Module | Callable[..., torch.Tensor]) -> tuple[int, str]:
    """How many positional arguments ``field`` requires (without a default; ``-1`` when it also requires a
    keyword-only one, which no caller passes), read from the signature of its ``forward`` (a module;
    ``nn.Sequential``: 1) or of the function itself, and that signature written out for messages.

    Raises:
        TypeError: not callable, or an unreadable signature (one line).
    """
    if isinstance(field, nn.Sequential):
        return 1, "nn.Sequential(z)"
    if not callable(field):
        raise TypeError(f"field of type {type(field).__name__} is not callable: {ACCEPTED}")
    is_module = isinstance(field, nn.Module)
    name = f"{type(field).__name__}.forward" if is_module else getattr(field, "__name__", type(field).__name__)
    try:
        signature = inspect.signature(field.forward if is_module else field)
    except (TypeError, ValueError):
        raise TypeError(f"field {name}: cannot read its signature: {ACCEPTED}") from None
    params = signature.parameters.values()
    required = [p for p in params if p.kind in _POSITIONAL and p.default is p.empty]
    keyword_only = [p for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    shown = signature.replace(parameters=[p.replace(annotation=p.empty) for p in params],
                              return_annotation=signature.empty)
    return (-1 if keyword_only else len(required)), f"{name}{shown}"


def field_takes_depth(field: nn.Module | Callable[..., torch.Tensor]) -> bool:
    """Whether ``field`` is ``f(s, z)`` (``True``) or ``f(z)`` (``False``), read once from its signature
    (:func:`required_arguments`).

    Raises:
        TypeError: not callable, an unreadable signature, or neither 1 nor 2 required arguments (one line).
    """
    count, shown = required_arguments(field)
    if count not in (1, 2):
        wanted = "a required keyword-only argument" if count < 0 else f"{count} required arguments"
        raise TypeError(f"field {shown} takes {wanted}: {ACCEPTED}")
    return count == 2


class DepthField(nn.Module):
    """The user's field as ``f(s, z)`` for :func:`nodex.odesolve`; its parameters are the field's (none for a
    function). Checks that ``dz/ds`` has ``z``'s shape."""

    def __init__(self, field: nn.Module | Callable[..., torch.Tensor], takes_depth: bool) -> None:
        super().__init__()
        self.field = field
        self.takes_depth = takes_depth

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``s``: 0-d depth, ``z``: ``(B, ...)`` -> ``dz/ds``: ``(B, ...)``."""
        dz = self.field(s, z) if self.takes_depth else self.field(z)
        if not isinstance(dz, torch.Tensor) or dz.shape != z.shape:
            got = tuple(dz.shape) if isinstance(dz, torch.Tensor) else type(dz).__name__
            raise ValueError(f"the field returned {got} for a state {tuple(z.shape)}: dz/ds must have z's shape")
        if dz.dtype != z.dtype:
            raise ValueError(f"the field returned {dz.dtype} for a {z.dtype} state: dz/ds must have z's dtype (cast "
                             "the field, e.g. field.to(x.dtype), or x)")
        return dz


def captured_tensors(field: nn.Module | Callable[..., torch.Tensor]) -> list[torch.Tensor]:
    """The tensors that require grad which a function ``field`` reads from outside its arguments: the variables it
    closes over and the globals it names (and the parameters of modules among them); ``[]`` for a module (its
    parameters are its own) or a callable whose code cannot be read."""
    if isinstance(field, nn.Module):
        return []
    try:
        found = inspect.getclosurevars(field)
    except (TypeError, ValueError):
        return []
    tensors: list[torch.Tensor] = []
    for value in (*found.nonlocals.values(), *found.globals.values()):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            tensors.append(value)
        elif isinstance(value, nn.Module):
            tensors.extend(p for p in value.parameters() if p.requires_grad)
    return tensors


def _graph_leaves(out: torch.Tensor, stops: set[Any]) -> list[torch.Tensor]:
    """The leaf tensors that ``out``'s autograd graph reaches without passing a node in ``stops``."""
    leaves, seen, todo = [], set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad: a leaf
            leaves.append(node.variable)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def check_adjoint_params(field: nn.Module, z: torch.Tensor, s: torch.Tensor, params: list[torch.Tensor]) -> None:
    """Under the adjoint only ``params`` get gradients: one evaluation of ``field`` at a detached ``z`` finds any
    other tensor that requires grad and that ``dz/ds`` depends on (an attribute of an object a function field
    reads, say), which the adjoint would silently leave without its gradient.

    Raises:
        ValueError: one line naming the shapes of the tensors not covered and the fix.
    """
    with torch.enable_grad():
        dz = field(s, z.detach())
    if not dz.requires_grad:
        return
    covered = {id(p) for p in params}
    stops = {p.grad_fn for p in params if p.grad_fn is not None}
    missing = [leaf for leaf in _graph_leaves(dz, stops) if id(leaf) not in covered]
    if missing:
        shapes = ", ".join(str(tuple(t.shape)) for t in missing[:3])
        raise ValueError(f"the field depends on tensors that require grad ({shapes}) which the adjoint cannot see: "
                         "pass them as NeuralODE(..., adjoint_params=[...]), or make them parameters of an nn.Module "
                         "field")


def _check_state(x: Any) -> None:
    """Raises TypeError: ``x`` is not a floating-point tensor (one line saying what to pass)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x is a {type(x).__name__}: NeuralODE integrates a tensor (B, ...), e.g. torch.tensor(x)")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"x has dtype {x.dtype}: NeuralODE integrates floating-point states (pass x.float())")


class NFE(NamedTuple):
    """Field evaluations of a :class:`NeuralODE`'s last call: ``forward`` (its solve) and ``backward`` (those
    since: the adjoint's backward solve, counted as the gradient is taken; 0 under autograd, which
    backpropagates through the forward solve's graph without evaluating the field)."""

    forward: int
    backward: int


class NeuralODE(nn.Module):
    """``dz/ds = f(z)`` or ``f(s, z)`` from ``z(0) = x`` over ``[0, S]``: ``node(x)`` is ``z(S)``, x's shape.

    Args:
        field: an ``nn.Module`` (``forward(z)`` or ``forward(s, z)``; ``nn.Sequential``: ``f(z)``) or a plain
            function ``f(z)`` / ``f(s, z)``; ``z``: ``(B, ...)`` like ``x``, ``s``: the depth, a 0-d tensor.
        solver: a method of :func:`nodex.ode.available_methods` (``dopri5``, ``tsit5``, ``rk4``, ...).
        sensitivity: ``autograd`` (backpropagate through the solver) or ``adjoint`` (O(1) memory).
        rtol, atol: adaptive methods' tolerances.
        S: the depth integrated to (positive).
        step_size: fixed-step methods' step (required by them).
        adjoint_params: under the adjoint, tensors to differentiate besides the field module's parameters and the
            tensors a function field closes over or names as globals (found by themselves); e.g. the attributes of
            an object a function reads. A tensor the field depends on that is in none of these is refused at the
            first adjoint solve, never silently left without its gradient.
        **options: :class:`nodex.SolverSettings` fields (``max_num_steps``, ``seminorm``, ``engine``,
            ``step_rule``); anything else is a torchdiffeq solver option (and hands the solve to torchdiffeq).

    Raises:
        TypeError: a field of another signature; ValueError: a bad solver value (SolverSettings' message) or ``S``.
    """

    def __init__(
        self,
        field: nn.Module | Callable[..., torch.Tensor],
        solver: str = "dopri5",
        sensitivity: str = "autograd",
        rtol: float = 1e-4,
        atol: float = 1e-4,
        S: float = 1.0,
        step_size: float | None = None,
        adjoint_params: Sequence[torch.Tensor] = (),
        **options: Any,
    ) -> None:
        super().__init__()
        self.takes_depth = field_takes_depth(field)
        if not (isinstance(S, (int, float)) and math.isfinite(S) and S > 0):
            raise ValueError(f"S={S!r} must be a positive number (the depth integrated to, e.g. S=1.0)")
        if "method" in options:
            raise TypeError(f"method={options['method']!r}: NeuralODE names the method solver= (e.g. solver='rk4')")
        settings = {k: options.pop(k) for k in list(options) if k in _SETTING_NAMES}
        self.settings = SolverSettings(method=solver, rtol=rtol, atol=atol, step_size=step_size,
                                       sensitivity=sensitivity, options=options, **settings)
        self.field = field
        self._extra_params = [*captured_tensors(field), *adjoint_params]
        self._adjoint_checked = False
        self._S = float(S)
        self._spans: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        self._counter = NFECounter()
        self._forward_nfe = 0

    @property
    def S(self) -> float:
        """The depth integrated to."""
        return self._S

    @property
    def nfe(self) -> NFE:
        """Field evaluations of the last call (:meth:`forward` or :meth:`trajectory`), forward and backward."""
        return NFE(self._forward_nfe, self._counter.count - self._forward_nfe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, ...)`` -> ``z(S)``: ``(B, ...)``, x's shape."""
        _check_state(x)
        return self._solve(x, self._span(x))[-1]

    def trajectory(self, x: torch.Tensor, s_span: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """The states at the depths ``s_span`` (``(T,)``, monotonic; ``x`` holds at ``s_span[0]``):
        ``(T, *x.shape)``. Same solver and sensitivity as :meth:`forward`."""
        _check_state(x)
        s = torch.as_tensor(s_span, dtype=x.dtype, device=x.device)
        if s.dim() != 1 or len(s) < 2:
            raise ValueError(f"s_span has shape {tuple(s.shape)}: it must be 1-D with at least 2 depths")
        steps = s[1:] - s[:-1]
        if not (bool((steps > 0).all()) or bool((steps < 0).all())):
            raise ValueError(f"s_span={s.tolist()} must be strictly increasing or strictly decreasing")
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"s_span={s.tolist()} must hold finite depths")
        return self._solve(x, s)

    def _solve(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """One counted solve from ``x`` ``(B, ...)`` over ``s`` ``(T,)``: ``(T, B, ...)``; an empty batch is
        not solved (``x`` at every depth, no evaluation)."""
        self._counter.reset()
        self._forward_nfe = 0
        if x.numel() == 0:
            return x.unsqueeze(0).expand(len(s), *x.shape).clone()
        field, params = DepthField(self.field, self.takes_depth), None
        if self.settings.sensitivity == "adjoint":
            params = [*field.parameters(), *self._extra_params]
            if not self._adjoint_checked:
                check_adjoint_params(field, x, s[0], params)
                self._adjoint_checked = True
        sol = odesolve(field, x, s, self.settings, counter=self._counter, adjoint_params=params)
        self._forward_nfe = self._counter.count
        return sol

    def _span(self, x: torch.Tensor) -> torch.Tensor:
        """``[0, S]`` in x's dtype and device, made once per pair (no host copy, nor device sync, per call)."""
        key = (x.dtype, x.device)
        if key not in self._spans:
            self._spans[key] = torch.tensor([0.0, self._S], dtype=x.dtype, device=x.device)
        return self._spans[key]

    def extra_repr(self) -> str:
        return f"{self.settings.describe()}, sensitivity={self.settings.sensitivity}, S={self._S:g}"
