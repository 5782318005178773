"""Member-batched MLP fields: the fast path of seed ensembles.

:class:`~nodex.models.ensemble.EnsembleNeuralODE` evaluates any slot under ``vmap`` over the
member dimension. For the fields of the paper's toy models — an :class:`MLPField` of static,
depth-concatenated, Galërkin or stacked linear layers with elementwise activations, optionally with a
data control or wrapped in a :class:`HigherOrderField` — this module evaluates the ``K``
members directly on the stacked parameters with batched matmuls (``baddbmm``): the same
arithmetic per member, without functorch's per-op wrapping, which cost about half of such a
field's forward + backward (measured in ``scripts/bench_ensemble.py``).

:func:`batched_field` returns ``None`` for anything else (convolutions, per-sample depths,
learnable Galërkin dilation or shift, unknown layers or activations), and the ensemble keeps
its general ``vmap`` path for it.

Shapes: stacked weights ``(K, out, in)``, biases ``(K, out)``, Galërkin coefficients
``(K, m, n_params)``, stacked pieces ``(K, p, n_params)``; states ``(K, B, n)``, controls ``(K, B, ...)``; the depth ``s`` is 0-d.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from nodex.models.fields import HigherOrderField, MLPField
from nodex.models.galerkin import GalLinear
from nodex.models.layers import DepthConcatLinear, StaticLinear
from nodex.models.stacked import StackedLinear

# Parameter-free modules that act elementwise, so they apply to ``(K, B, n)`` as to ``(B, n)``.
_ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.Softplus, nn.ELU, nn.SiLU, nn.Sigmoid, nn.Identity)

Layer = Callable[[Sequence[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]
BatchedField = Callable[[Sequence[torch.Tensor], torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _affine(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h @ W_k^T + b_k`` per member: ``h`` ``(K, B, in)``, ``W`` ``(K, out, in)``, ``b`` ``(K, out)``."""
    if b is None:
        return torch.bmm(h, W.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))


def _affine_from_flat(theta: torch.Tensor, h: torch.Tensor, out_features: int, in_features: int, bias: bool) -> torch.Tensor:
    """:func:`~nodex.models.layers.linear_from_flat` per member: ``theta`` ``(K, n_params)``."""
    n_weight = out_features * in_features
    W = theta[:, :n_weight].view(-1, out_features, in_features)
    return _affine(h, W, theta[:, n_weight:] if bias else None)


def _layer(layer: nn.Module, prefix: str, index: dict[str, int]) -> Layer | None:
    """The batched form of one linear layer; its tensors are looked up by name in ``index``."""
    if type(layer) in (StaticLinear, DepthConcatLinear):
        w = index[prefix + "weight"]
        b = index.get(prefix + "bias")
        if type(layer) is StaticLinear:
            return lambda t, s, h: _affine(h, t[w], None if b is None else t[b])

        def concat(t: Sequence[torch.Tensor], s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            W = t[w]  # [W_h, w_s]: the depth enters as one extra input feature
            out = _affine(h, W[:, :, :-1], None if b is None else t[b])
            depth = s.to(h).reshape(1, 1, 1).expand(*h.shape[:2], 1)  # as depth_column: a (B, 1) column per member
            return out + depth * W[:, :, -1].unsqueeze(1)

        return concat
    if type(layer) is GalLinear and layer.basis.dilation is None and layer.basis.shift is None:
        a, shape, basis = index[prefix + "coeffs"], (layer.out_features, layer.in_features, layer.has_bias), layer.basis

        def galerkin(t: Sequence[torch.Tensor], s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            alpha = t[a]  # (K, m, n_params); ψ(s) has no member parameters (buffers are constants)
            return _affine_from_flat(torch.matmul(basis(s.to(alpha.dtype)), alpha), h, *shape)

        return galerkin
    if type(layer) is StackedLinear:
        c, shape, piece = index[prefix + "coeffs"], (layer.out_features, layer.in_features, layer.has_bias), layer.piece

        def stacked(t: Sequence[torch.Tensor], s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            # every member's piece at depth s (the breakpoints are the members' common config)
            return _affine_from_flat(t[c][:, piece(s)], h, *shape)

        return stacked
    return None


def batched_field(field: nn.Module, prefix: str, names: Sequence[str]) -> BatchedField | None:
    """``field`` evaluated for all members at once, or ``None`` where only ``vmap`` applies.

    Args:
        field: the template member's field (named ``prefix`` without the dot in its model).
        prefix: its name in the member model, with a trailing dot (``"field."``).
        names: the member names of the stacked tensors the returned function receives.

    Returns:
        ``f(tensors, s, Z, U) -> (K, B, n_out)`` with ``tensors`` in ``names`` order, ``s``
        0-d, ``Z`` ``(K, B, n)`` and ``U`` the stacked control (or ``None``).
    """
    order = 1
    if type(field) is HigherOrderField:
        order, field, prefix = field.order, field.field, prefix + "field."
    if type(field) is not MLPField or not all(type(act) in _ELEMENTWISE for act in field.acts):
        return None
    index = {name: i for i, name in enumerate(names)}
    layers = [_layer(layer, f"{prefix}layers.{i}.", index) for i, layer in enumerate(field.layers)]
    if any(layer is None for layer in layers):
        return None
    acts, controlled = list(field.acts), field.control_features > 0

    def evaluate(tensors: Sequence[torch.Tensor], s: torch.Tensor, Z: torch.Tensor, U: torch.Tensor | None) -> torch.Tensor:
        h = torch.cat([Z, U.reshape(*U.shape[:2], -1)], dim=-1) if controlled else Z
        for layer, act in zip(layers, acts):
            h = act(layer(tensors, s, h))
        out = layers[-1](tensors, s, h)
        if order == 1:
            return out
        return torch.cat([Z[..., Z.shape[-1] // order:], out], dim=-1)

    return evaluate
