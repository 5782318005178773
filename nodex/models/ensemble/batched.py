"""Member-batched MLP fields: the fast path of seed ensembles.

:class:`~nodex.models.ensemble.EnsembleNeuralODE` evaluates any slot under ``vmap`` over the
member dimension. For the fields of the paper's toy models — an :class:`MLPField` of static,
depth-concatenated, Galërkin or stacked linear layers with elementwise activations, optionally
with a data control or wrapped in a :class:`HigherOrderField` — this module evaluates the ``K``
members directly on the stacked parameters with batched matmuls (``baddbmm``, each layer's
batched form from :func:`nodex.models.depth.batched_linear`): the same
arithmetic per member, without functorch's per-op wrapping (``scripts/bench/bench_ensemble.py``
times both paths; BENCHMARKS.md has the numbers).

:func:`batched_field` returns ``None`` for anything else (convolutions, per-sample depths,
learnable Galërkin dilation or shift, unknown layers or activations), and the ensemble keeps
its general ``vmap`` path for it.

Shapes: stacked weights ``(K, out, in)``, biases ``(K, out)``, Galërkin coefficients
``(K, m, n_params)``, stacked pieces ``(K, p, n_params)``; states ``(K, B, n)``, controls
``(K, B, ...)``; the depth ``s`` is 0-d, or ``(K,)`` when each member has its own steps.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nodex.models.depth import BatchedLayer, batched_linear
from nodex.models.fields import HigherOrderField, MLPField

# Parameter-free modules that act elementwise, so they apply to ``(K, B, n)`` as to ``(B, n)``.
_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Softplus, nn.ELU, nn.SiLU, nn.Sigmoid, nn.Identity)

class BatchedField:
    """The field for all members: ``prepare(tensors)`` derives each layer's member tensors from the stacked ones
    (once per set of members: :class:`nodex.models.depth.BatchedLayer`), ``f(prepared, s, Z, U) -> (K, B, n_out)``
    evaluates it with ``s`` 0-d or ``(K,)``, ``Z`` ``(K, B, n)`` and ``U`` the stacked control (or ``None``)."""

    def __init__(self, layers: list[BatchedLayer], acts: list[nn.Module], controlled: bool, order: int) -> None:
        self.layers, self.acts, self.controlled, self.order = layers, acts, controlled, order

    def prepare(self, tensors: Sequence[torch.Tensor]) -> list[tuple]:
        return [layer.prepare(tensors) for layer in self.layers]

    def select(self, prepared: Sequence[tuple], rows: torch.Tensor) -> list[tuple]:
        """The members ``rows`` of ``prepare``'s tensors of all members."""
        return [layer.select(p, rows) for layer, p in zip(self.layers, prepared)]

    def __call__(self, prepared: Sequence[tuple], s: torch.Tensor, Z: torch.Tensor, U: torch.Tensor | None
                 ) -> torch.Tensor:
        h = torch.cat([Z, U.reshape(*U.shape[:2], -1)], dim=-1) if self.controlled else Z
        for layer, p, act in zip(self.layers, prepared, self.acts):
            h = act(layer.apply(p, s, h))
        out = self.layers[-1].apply(prepared[-1], s, h)
        if self.order == 1:
            return out
        return torch.cat([Z[..., Z.shape[-1] // self.order:], out], dim=-1)


def batched_field(field: nn.Module, prefix: str, names: Sequence[str]) -> BatchedField | None:
    """``field`` evaluated for all members at once, or ``None`` where only ``vmap`` applies.

    Args:
        field: the template member's field (named ``prefix`` without the dot in its model).
        prefix: its name in the member model, with a trailing dot (``"field."``).
        names: the member names of the stacked tensors ``prepare`` receives.
    """
    order = 1
    if type(field) is HigherOrderField:
        order, field, prefix = field.order, field.field, prefix + "field."
    if type(field) is not MLPField or not all(type(act) in _ELEMENTWISE for act in field.acts):
        return None
    index = {name: i for i, name in enumerate(names)}
    layers = [batched_linear(layer, f"{prefix}layers.{i}.", index) for i, layer in enumerate(field.layers)]
    if any(layer is None for layer in layers):
        return None
    return BatchedField(layers, list(field.acts), field.control_features > 0, order)
