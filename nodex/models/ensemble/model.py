"""K Neural ODEs of one architecture evaluated as one batched model (seed ensembles).

Member ``k``'s parameters are slice ``k`` of stacked tensors ``(K, *shape)``
(:func:`torch.func.stack_module_state`). Every slot of the member :class:`GeneralNeuralODE`
(``h_x``, control, horizon, field, integral loss, ``h_y``) is evaluated on a template copy
with its parameters pointed at the members' slices (as :func:`torch.func.functional_call`
does) under :func:`torch.func.vmap` over the member
dimension, so any slot built from standard modules works without per-variant code. The
MLP fields of the toy models take a faster path, batched matmuls on the stacked parameters
(:mod:`nodex.models.ensemble.batched`), with the same per-member arithmetic.

One solve integrates the stacked state ``(K, B, *state_shape)``: with fixed-step solvers each
member follows exactly the computation of its own run. With nodex's adaptive pairs (dopri5,
tsit5) each member has its own error norm, step sizes and accept/reject
(:mod:`nodex.ode.lean.member_steps`): the dynamics are evaluated for all members at once at
per-member depths ``s`` ``(K,)``, a member that has reached the end waits for the others, and
``nfe.members`` counts each member's own evaluations (forward and adjoint backward), so a
member takes its separate run's steps and reports its NFE. Other adaptive methods (torchdiffeq's)
share one step sequence (the error norm over the whole stacked state). Buffers are constants
(no running statistics are written back).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.func import stack_module_state, vmap

try:  # functorch's own entry points (what torch.func.vmap calls after its Python argument checks)
    from torch._functorch.predispatch import (
        _add_batch_dim, _remove_batch_dim, _vmap_decrement_nesting, _vmap_increment_nesting, lazy_load_decompositions,
    )
except ImportError:  # another torch: fall back to the public vmap
    _vmap_increment_nesting = None

from nodex.errors import ConfigError
from nodex.models.ensemble.batched import batched_field
from nodex.models.neural_ode import BoundDynamics, ModelOutput, GeneralNeuralODE
from nodex.ode import NFECounter, odesolve

# Slots whose parameters the dynamics use (the names BoundDynamics gives them too).
_DYNAMICS_SLOTS = ("field", "integral_loss")


def _refuse_state_in_training(member: nn.Module) -> None:
    """Slots run under ``vmap`` with buffers as constants: batch norm's running statistics would not be kept and
    dropout's randomness is refused there, so a member would not be its separate run.

    Raises:
        ConfigError: naming the module and the way to train the seeds instead.
    """
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Dropout, nn.AlphaDropout)
    for name, module in member.named_modules():
        if isinstance(module, kinds):
            raise ConfigError(
                f"trainer.ensemble stacks the members under torch.func.vmap, where {type(module).__name__} ({name}) "
                "cannot train as in a separate run (running statistics are not kept, random masks are refused): "
                "train the seeds as a sweep (--multirun seed=0,1,...) or use trainer.ensemble=1")


def member_map(fn: Callable[..., Any], size: int, *args: Any) -> Any:
    """``torch.func.vmap(fn)(*args)`` over a leading member dimension of size ``size``.

    ``args``: tensors with the member dimension first, tuples/lists of such, or ``None``
    (passed through); outputs: a tensor or a tuple of tensors, member dimension first.
    Enters functorch directly (nesting level, batch dims): the public ``vmap``'s per-call
    Python work (pytrees, argument checks) is a large share of a small field's evaluation.
    """
    if _vmap_increment_nesting is None:
        return vmap(fn, in_dims=tuple(None if a is None else 0 for a in args))(*args)
    lazy_load_decompositions()
    level = _vmap_increment_nesting(size, "error")
    try:
        out = fn(*(_wrap(a, level) for a in args))
        if isinstance(out, tuple):
            return tuple(_remove_batch_dim(o, level, size, 0) for o in out)
        return _remove_batch_dim(out, level, size, 0)
    finally:
        _vmap_decrement_nesting()


def _wrap(arg: Any, level: int) -> Any:
    if arg is None:
        return None
    if isinstance(arg, (tuple, list)):
        return type(arg)(_wrap(a, level) for a in arg)
    return _add_batch_dim(arg, 0, level)


class _Swap:
    """Points a module's parameters/buffers (by dotted name) at other tensors while a call
    runs: a lean :func:`torch.func.functional_call` (names resolved once, no tied-weight
    scan), used inside the member map where the tensors are the members' batched slices."""

    def __init__(self, root: nn.Module, names: list[str]) -> None:
        self.slots: list[tuple[dict, str]] = []
        for name in names:
            owner_name, _, attr = name.rpartition(".")
            owner = root.get_submodule(owner_name)
            self.slots.append((owner._parameters if attr in owner._parameters else owner._buffers, attr))

    def call(self, tensors: Sequence[torch.Tensor], fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with the named tensors replaced by ``tensors`` (restored after)."""
        saved = [table[attr] for table, attr in self.slots]
        for (table, attr), tensor in zip(self.slots, tensors):
            table[attr] = tensor
        try:
            return fn(*args)
        finally:
            for (table, attr), tensor in zip(self.slots, saved):
                table[attr] = tensor


class _EnsembleDynamics(nn.Module):
    """``dZ/ds`` for the stacked state: the member dynamics vmapped over ``K``; ``rows``: only those members
    (the per-member solve evaluates its unfinished members alone)."""

    takes_member_rows = True

    def __init__(
        self, ensemble: "EnsembleNeuralODE", control: torch.Tensor | None, horizon: torch.Tensor | None
    ) -> None:
        super().__init__()
        self._ensemble = [ensemble]  # a list: not registered (its parameters go in adjoint_params)
        self.control = control
        self.horizon = horizon

    def forward(self, s: torch.Tensor, state: Any, rows: torch.Tensor | None = None) -> Any:
        return self._ensemble[0].dynamics(s, state, self.control, self.horizon, rows)


class EnsembleNeuralODE(nn.Module):
    """``K`` NeuralODEs with identical structure, trained as one model.

    Args:
        members: the ``K`` independently initialised models (their values are copied into
            the stacked parameters; the members themselves are left untouched).

    ``forward(X)``: ``X`` ``(K, B, *input_shape)`` -> :class:`ModelOutput` with a leading
    member dimension on every tensor (``y_hat`` ``(K, B, n_out)``, ``z_S`` ``(K, B, ...)``,
    ``loss_integral`` ``(K,)``); :func:`member_output` takes member ``k``'s slice.
    ``nfe.count`` counts evaluations of the batched dynamics (one per call, for all members);
    ``nfe.members`` each member's own, where its steps are its own (``None`` otherwise: then every
    member's is ``nfe.count``).
    """

    def __init__(self, members: Sequence[GeneralNeuralODE]) -> None:
        super().__init__()
        members = list(members)
        if not members or not all(isinstance(m, GeneralNeuralODE) for m in members):
            raise TypeError("EnsembleNeuralODE stacks GeneralNeuralODE members (model.kind=neural_ode)")
        if members[0].regularizer is not None or members[0].steer is not None:  # the stacked solve has neither
            raise ConfigError("task.regularizer and model.horizon.steer need trainer.ensemble=1 (seeds: use a sweep)")
        _refuse_state_in_training(members[0])
        params, buffers = stack_module_state(members)
        self.size = len(members)
        self.param_names = list(params)
        self.stacked = nn.ParameterList(
            nn.Parameter(params[n].detach().clone(), requires_grad=params[n].requires_grad) for n in self.param_names
        )
        self.buffer_names = list(buffers)
        for i, name in enumerate(self.buffer_names):
            self.register_buffer(f"stacked_buffer_{i}", buffers[name].clone(), persistent=False)
        template = copy.deepcopy(members[0])
        # Held in lists so they stay unregistered: their own tensors are never used.
        self._template = [template]
        self._bounds = [BoundDynamics(template.field, None, template.integral_loss, None)]
        self.settings, self.S = template.settings, template.S
        self.nfe = NFECounter()
        self._swappers: dict[tuple[str, ...], _Swap] = {}
        self._slot_keys: dict[tuple[str, ...], list[tuple[dict, str]]] = {}
        # (None or the id of a rows tensor, grad mode, batched?) -> the tensors of all members / of those rows: _member_tensors
        self._selection: dict[tuple, tuple] = {}
        # MLP fields of the toy models skip vmap: batched matmuls on the stacked parameters.
        self._batched_field = None
        if template.integral_loss is None:
            self._batched_field = batched_field(template.field, "field.", self._slot_names(_DYNAMICS_SLOTS))
        self.use_batched_field = True  # False: every slot through vmap (tests compare the two)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        """``.to()``, ``.double()``, ``.cuda()``: the unregistered template follows, since the
        batched MLP fields read constants (Galërkin basis, stacked breakpoints) from it."""
        super()._apply(fn, *args, **kwargs)
        self.template._apply(fn, *args, **kwargs)
        return self

    # -- state access -------------------------------------------------------------------
    @property
    def has_batched_field(self) -> bool:
        """Whether the field has a batched-matmul form (else every evaluation goes through vmap)."""
        return self._batched_field is not None

    @property
    def template(self) -> GeneralNeuralODE:
        return self._template[0]

    def named_stacked(self) -> list[tuple[str, torch.Tensor]]:
        """``(member name, stacked tensor)`` for every parameter and buffer."""
        buffers = [getattr(self, f"stacked_buffer_{i}") for i in range(len(self.buffer_names))]
        return [*zip(self.param_names, self.stacked), *zip(self.buffer_names, buffers)]

    def _slot_names(self, slots: tuple[str, ...]) -> list[str]:
        return [n for n, _ in self.named_stacked() if n.split(".", 1)[0] in slots]

    def _slot_tensors(self, slots: tuple[str, ...]) -> list[torch.Tensor]:
        """The stacked tensors of the slots' parameters and buffers (in :meth:`_slot_names` order)."""
        if slots not in self._slot_keys:
            params = [(self.stacked._parameters, str(i))
                      for i, n in enumerate(self.param_names) if n.split(".", 1)[0] in slots]
            buffers = [(self._buffers, f"stacked_buffer_{i}")
                       for i, n in enumerate(self.buffer_names) if n.split(".", 1)[0] in slots]
            self._slot_keys[slots] = params + buffers
        return [table[key] for table, key in self._slot_keys[slots]]

    def dynamics_parameters(self) -> list[torch.Tensor]:
        return [p for n, p in zip(self.param_names, self.stacked) if n.split(".", 1)[0] in _DYNAMICS_SLOTS]

    @torch.no_grad()
    def load_member(self, k: int, model: GeneralNeuralODE) -> GeneralNeuralODE:
        """Copy member ``k``'s current parameters into ``model`` (same structure); returns it."""
        for name, stacked in zip(self.param_names, self.stacked):
            model.get_parameter(name).copy_(stacked[k])
        return model

    # -- evaluation -----------------------------------------------------------------------
    def _swapper(self, slots: tuple[str, ...]) -> "_Swap":
        if slots not in self._swappers:
            self._swappers[slots] = _Swap(self.template, self._slot_names(slots))
        return self._swappers[slots]

    def _vmap_slot(self, slot: str, *args: torch.Tensor) -> torch.Tensor:
        """``template.<slot>(*args)`` for every member: ``args`` carry the leading ``K``."""
        module = getattr(self.template, slot)
        swap = self._swapper((slot,))

        def one(tensors: list[torch.Tensor], *a: torch.Tensor) -> torch.Tensor:
            return swap.call(tensors, module, *a)

        return member_map(one, self.size, self._slot_tensors((slot,)), *args)

    def dynamics(self, s: torch.Tensor, state: Any, control: torch.Tensor | None, horizon: torch.Tensor | None,
                 rows: torch.Tensor | None = None) -> Any:
        """The member dynamics (field bound to its control, integral channel, horizon scaling)
        vmapped over members (or batched directly, see :mod:`nodex.models.ensemble.batched`);
        ``s``: 0-d, or each member's depth; ``state``: ``(K, B, ...)`` or a tuple of such; ``rows``: the
        members ``s`` and ``state`` hold (their indices, ``(K',)``), ``None``: all ``K``."""
        tensors, size = self._slot_tensors(_DYNAMICS_SLOTS), self.size
        batched = self._batched_field is not None and self.use_batched_field and horizon is None
        if rows is not None or batched:
            tensors, control, horizon, prepared = self._member_tensors(rows, tensors, control, horizon, batched)
            size = size if rows is None else len(rows)
        if batched:
            return self._batched_field(prepared, s, state, control)
        bound = self._bounds[0]
        swap = self._swapper(_DYNAMICS_SLOTS)

        def one(tensors: list[torch.Tensor], z: Any, u: torch.Tensor | None, h: torch.Tensor | None,
                s_k: torch.Tensor | None) -> Any:
            bound.control, bound.horizon = u, h
            try:
                return swap.call(tensors, bound, s if s_k is None else s_k, z)
            finally:
                bound.control = bound.horizon = None

        per_member = s if s.dim() == 1 else None
        return member_map(one, size, tensors, state, control, horizon, per_member)

    def _member_tensors(self, rows: torch.Tensor | None, tensors: list[torch.Tensor], control: torch.Tensor | None,
                        horizon: torch.Tensor | None, batched: bool) -> tuple:
        """``(tensors, control, horizon, prepared)`` of the members ``rows`` (``None``: all): the rows of the
        dynamics' tensors, the control and the horizon, and (``batched``) the batched field's layer tensors
        (:meth:`BatchedField.prepare`: transposed weights, split coefficients), made once per ``rows`` tensor and
        once for all members (per grad mode). The per-member solve passes one ``rows`` tensor to every evaluation of
        an attempt, so an attempt selects (and, under autograd, scatters the gradients back) once instead of once
        per stage; a solve's graph holds each prepared tensor once, not once per evaluation, and the rows of a
        prepared tensor are taken from the all-member one, so every evaluation's gradient reaches a parameter
        through the one all-member node and sums in the order it did with a node per evaluation (the members'
        gradients stay their separate runs' to the bit where they were). Reused only for the very same ``rows``,
        tensors and grad mode, whose versions are unchanged."""
        grad = torch.is_grad_enabled()
        versions = [t._version for t in tensors]  # control and horizon are made by each forward, never changed
        every = self._selection.get((None, grad, batched))
        if (every is None or every[1] != versions or every[2] is not control or every[3] is not horizon
                or any(a is not b for a, b in zip(every[0], tensors))):
            prepared = self._batched_field.prepare(tensors) if batched else None
            every = self._selection[None, grad, batched] = (tensors, versions, control, horizon, prepared)
        if rows is None:
            return tensors, control, horizon, every[4]
        part = self._selection.get((id(rows), grad, batched))  # the entry holds rows: its id is not reused
        if part is None or part[0] is not rows or part[1] is not every:
            chosen = [t.index_select(0, rows) for t in tensors]
            picked = tuple(None if x is None else x.index_select(0, rows) for x in (control, horizon))
            part = (rows, every, (chosen, *picked, self._batched_field.select(every[4], rows) if batched else None))
            self._selection = {k: v for k, v in self._selection.items() if k[0] is None}  # one rows tensor at a time
            self._selection[id(rows), grad, batched] = part
        return part[2]

    def forward(self, X: torch.Tensor) -> ModelOutput:
        """``X`` ``(K, B, *input_shape)`` -> stacked :class:`ModelOutput`."""
        t = self.template
        self._selection = {}
        Z0 = self._vmap_slot("input_layer", X)
        U = None
        if t.control is not None:
            if isinstance(t.control, nn.Module):
                U = self._vmap_slot("control", X, Z0)
            else:
                U = member_map(t.control, self.size, X, Z0)
        H = self._vmap_slot("horizon", X) if t.horizon is not None else None
        dyn = _EnsembleDynamics(self, U, H)
        extra = [x for x in (U, H) if x is not None and x.requires_grad]
        params = (*self.dynamics_parameters(), *extra)
        jump_t = t.jump_t if H is None else None
        span = t.span.to(Z0.dtype) if H is None else torch.tensor([0.0, 1.0], dtype=Z0.dtype, device=Z0.device)
        if t.integral_loss is None:
            Z_S = odesolve(dyn, Z0, span, self.settings, counter=self.nfe, jump_t=jump_t, adjoint_params=params,
                           per_member=True)[-1]
            loss_integral = None
        else:
            Q0 = torch.zeros(Z0.shape[:2], dtype=Z0.dtype, device=Z0.device)
            zs, qs = odesolve(dyn, (Z0, Q0), span, self.settings, counter=self.nfe, jump_t=jump_t,
                              adjoint_params=params, per_member=True)
            Z_S, loss_integral = zs[-1], qs[-1].mean(dim=1)
        extras = {} if H is None else {"horizon": H.detach()}
        return ModelOutput(self._vmap_slot("readout", Z_S), Z_S, loss_integral, extras)


def member_output(out: ModelOutput, k: int) -> ModelOutput:
    """Member ``k``'s slice of a stacked :class:`ModelOutput`."""
    return ModelOutput(
        out.y_hat[k], out.z_S[k], None if out.loss_integral is None else out.loss_integral[k],
        {key: v[k] for key, v in out.extras.items()},
    )
