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

from typing import Callable, Sequence

import torch
from torch import nn

from nodex.models.depth import batched_linear
from nodex.models.fields import HigherOrderField, MLPField

# Parameter-free modules that act elementwise, so they apply to ``(K, B, n)`` as to ``(B, n)``.
_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Softplus, nn.ELU, nn.SiLU, nn.Sigmoid, nn.Identity)

BatchedField = Callable[[Sequence[torch.Tensor], torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def batched_field(field: nn.Module, prefix: str, names: Sequence[str]) -> BatchedField | None:
    """``field`` evaluated for all members at once, or ``None`` where only ``vmap`` applies.

    Args:
        field: the template member's field (named ``prefix`` without the dot in its model).
        prefix: its name in the member model, with a trailing dot (``"field."``).
        names: the member names of the stacked tensors the returned function receives.

    Returns:
        ``f(tensors, s, Z, U) -> (K, B, n_out)`` with ``tensors`` in ``names`` order, ``s``
        0-d or ``(K,)``, ``Z`` ``(K, B, n)`` and ``U`` the stacked control (or ``None``).
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
    acts, controlled = list(field.acts), field.control_features > 0

    def evaluate(
        tensors: Sequence[torch.Tensor], s: torch.Tensor, Z: torch.Tensor, U: torch.Tensor | None
    ) -> torch.Tensor:
        h = torch.cat([Z, U.reshape(*U.shape[:2], -1)], dim=-1) if controlled else Z
        for layer, act in zip(layers, acts):
            h = act(layer(tensors, s, h))
        out = layers[-1](tensors, s, h)
        if order == 1:
            return out
        return torch.cat([Z[..., Z.shape[-1] // order:], out], dim=-1)

    return evaluate
