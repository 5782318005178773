"""The ``field.depth`` slot: the one place that knows every depth kind.

How the parameters of a field's layer depend on the depth ``s``, per kind (linear layer of MLP
fields; conv layer of conv fields; member-batched form of seed ensembles):

- ``none``: :class:`StaticLinear`; :class:`DepthConv2d`; one batched affine map.
- ``concat``: :class:`DepthConcatLinear`; :class:`DepthConv2d` with an ``s`` channel; affine map + depth column.
- ``galerkin``: :class:`GalLinear`; :class:`GalConv2d`; ψ(s) @ α per member.
- ``stacked``: :class:`StackedLinear`; :class:`StackedConv2d`; the piece of ``s`` per member.

``options`` are the kind's own options (``galerkin``: :class:`GalerkinSpec` keys; ``stacked``:
``pieces`` / ``boundaries``); ``S`` is the horizon (Galërkin period, stacked pieces). Everything
here takes plain Python arguments and raises ``ValueError`` about them; the field builders name
the config keys.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from nodex.models.galerkin import GalConv2d, GalerkinSpec, GalLinear
from nodex.models.layers import (
    DepthConcatLinear, DepthConv2d, StaticLinear,
)
from nodex.models.stacked import StackedConv2d, StackedLinear, stacked_boundaries

DEPTHS = ("concat", "galerkin", "none", "stacked")


def check_depth(depth: str) -> None:
    """Raises ``ValueError`` for an unknown depth kind."""
    if depth not in DEPTHS:
        raise ValueError(f"depth={depth!r} is unknown; choose one of: {', '.join(DEPTHS)}")


def chosen_layers(depth_layers: Sequence[int] | None, n_layers: int) -> set[int]:
    """Indices (``-1`` is the last, Python's way) of the layers that see the depth; ``None``: all.

    Raises:
        ValueError: an index outside ``-n_layers .. n_layers - 1`` (it wrapped around before, silently).
    """
    if depth_layers is None:
        return set(range(n_layers))
    outside = [i for i in depth_layers if not -n_layers <= int(i) < n_layers]
    if outside:
        raise ValueError(f"depth_layers={list(depth_layers)}: the field has {n_layers} layers, so an index is "
                         f"0..{n_layers - 1} (or -1 for the last); {outside[0]} is not one")
    return {int(i) % n_layers for i in depth_layers}


def depth_linear(
    depth: str, in_features: int, out_features: int, *, bias: bool = True, S: float = 1.0,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The ``depth`` kind's linear layer ``layer(s, h)``: ``(B, in_features)`` -> ``(B, out_features)``.

    Raises:
        ValueError: an unknown kind or option.
    """
    check_depth(depth)
    if depth == "galerkin":
        return GalLinear(in_features, out_features, bias=bias, spec=GalerkinSpec.from_options(options, S))
    if depth == "stacked":
        return StackedLinear(in_features, out_features, stacked_boundaries(options, S), bias=bias)
    if depth == "concat":
        return DepthConcatLinear(in_features, out_features, bias=bias)
    return StaticLinear(in_features, out_features, bias=bias)


def depth_conv2d(
    depth: str, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True, S: float = 1.0,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The ``depth`` kind's same-padding conv ``layer(s, h)``: ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``.

    Raises:
        ValueError: an unknown kind or option.
    """
    check_depth(depth)
    if depth == "galerkin":  # θ(s) = Σ α_j ψ_j(s) for the kernel and bias
        spec = GalerkinSpec.from_options(options, S)
        return GalConv2d(in_channels, out_channels, kernel_size, bias=bias, spec=spec)
    if depth == "stacked":  # p pieces of constant kernels; breakpoints -> jump_t
        return StackedConv2d(in_channels, out_channels, kernel_size, stacked_boundaries(options, S), bias=bias)
    return DepthConv2d(in_channels, out_channels, kernel_size, bias=bias, depth_concat=depth == "concat")


class BatchedLayer:
    """One layer for all members, in two parts: ``prepare(tensors)`` derives the layer's member tensors from the
    stacked ones (transposed weights, biases as ``(K, 1, out)``, split coefficients) — once per set of members,
    not once per evaluation, so an ODE solve's graph holds these views once — and ``apply(prepared, s, h)``
    evaluates the layer. ``layer(tensors, s, h)`` does both."""

    __slots__ = ("prepare", "apply", "select")

    def __init__(self, prepare: Callable[[Sequence[torch.Tensor]], tuple],
                 apply: Callable[[tuple, torch.Tensor, torch.Tensor], torch.Tensor],
                 select: Callable[[tuple, torch.Tensor], tuple]) -> None:
        self.prepare, self.apply, self.select = prepare, apply, select

    def __call__(self, tensors: Sequence[torch.Tensor], s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.apply(self.prepare(tensors), s, h)


def _rows(x: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if x is None else x.index_select(0, rows)


def _rows_transposed(xT: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The rows of a transposed weight ``(K, in, out)``, laid out as the transpose of the rows of the weight (so a
    matmul sees the same strides as with the weight's own rows)."""
    return xT.transpose(1, 2).index_select(0, rows).transpose(1, 2)


def _affine(h: torch.Tensor, WT: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """:func:`batched_affine` with the weight already transposed ``(K, in, out)`` and the bias ``(K, 1, out)``."""
    return torch.bmm(h, WT) if b is None else torch.baddbmm(b, h, WT)


def batched_linear(layer: nn.Module, prefix: str, index: dict[str, int]) -> BatchedLayer | None:
    """The member-batched form of one linear layer of a field, or ``None`` (then only ``vmap`` applies).

    Args:
        layer: the template member's layer (any :func:`depth_linear` kind).
        prefix: its name in the member model, with a trailing dot (``"field.layers.0."``).
        index: member tensor name -> position in the ``tensors`` the returned layer receives.

    The returned ``layer(tensors, s, h)`` takes ``h`` ``(K, B, in)`` and ``s`` 0-d or ``(K,)`` (each member's
    depth) -> ``(K, B, out)``: the same arithmetic as each member's own layer (:class:`BatchedLayer`).
    """
    kind = type(layer)
    if kind in (StaticLinear, DepthConcatLinear):
        return _batched_affine(kind is DepthConcatLinear, index[prefix + "weight"], index.get(prefix + "bias"))
    if kind is GalLinear and layer.basis.dilation is None and layer.basis.shift is None:
        return _batched_galerkin(layer, index[prefix + "coeffs"])
    if kind is StackedLinear:
        return _batched_stacked(layer, index[prefix + "coeffs"])
    return None


def _batched_affine(concat: bool, w: int, b: int | None) -> BatchedLayer:
    """A static (``concat=False``) or depth-concat linear layer; ``w``, ``b``: its tensors' positions."""

    def bias(t: Sequence[torch.Tensor]) -> torch.Tensor | None:
        return None if b is None else t[b].unsqueeze(1)

    if not concat:
        return BatchedLayer(lambda t: (t[w].transpose(1, 2), bias(t)), lambda p, s, h: _affine(h, *p),
                            lambda p, rows: (_rows_transposed(p[0], rows), _rows(p[1], rows)))

    def concat_prepare(t: Sequence[torch.Tensor]) -> tuple:
        W = t[w]  # [W_h, w_s]: the depth enters as one extra input feature
        return W[:, :, :-1].transpose(1, 2), bias(t), W[:, :, -1].unsqueeze(1)

    def concat_apply(p: tuple, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = _affine(h, p[0], p[1])
        depth = s.to(h).reshape(-1, 1, 1).expand(*h.shape[:2], 1)  # as depth_column: a (B, 1) column per member
        return out + depth * p[2]

    return BatchedLayer(concat_prepare, concat_apply,
                        lambda p, rows: (_rows_transposed(p[0], rows), _rows(p[1], rows), _rows(p[2], rows)))


def _batched_galerkin(layer: nn.Module, a: int) -> BatchedLayer:
    """A Galërkin layer without dilation or shift; ``a``: its coefficients' position."""
    basis = layer.basis
    out_f, in_f, n_weight, has_bias = layer.out_features, layer.in_features, layer.n_weight, layer.has_bias

    def galerkin_prepare(t: Sequence[torch.Tensor]) -> tuple:
        # α split into its weight and bias columns: ψ(s) @ α of each part is the same numbers as the slices of
        # ψ(s) @ α, without slicing θ (and scattering its gradient back) at every evaluation
        alpha = t[a]  # (K, m, n_params); ψ(s) has no member parameters (buffers are constants)
        return alpha[:, :, :n_weight], alpha[:, :, n_weight:] if has_bias else None

    def galerkin(p: tuple, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        alpha_w, alpha_b = p
        psi = basis(s.to(alpha_w.dtype)).unsqueeze(-2)  # (1, m), or (K, 1, m) for per-member depths
        if psi.dim() == 2:
            psi = psi.expand(alpha_w.shape[0], 1, -1)
        # bmm itself: what torch.matmul runs here, without its broadcasting views (and their graph nodes)
        W = torch.bmm(psi, alpha_w).view(-1, out_f, in_f)
        b = None if alpha_b is None else torch.bmm(psi, alpha_b)  # (K, 1, out)
        return _affine(h, W.transpose(1, 2), b)

    return BatchedLayer(galerkin_prepare, galerkin, lambda p, rows: (_rows(p[0], rows), _rows(p[1], rows)))


def _batched_stacked(layer: nn.Module, c: int) -> BatchedLayer:
    """A stacked (piecewise-constant) layer; ``c``: its coefficients' position."""
    piece = layer.piece
    out_f, in_f, has_bias = layer.out_features, layer.in_features, layer.has_bias
    n_weight = out_f * in_f

    def stacked_prepare(t: Sequence[torch.Tensor]) -> tuple:
        coeffs = t[c]  # (K, pieces, n_params)
        members = torch.arange(coeffs.shape[0], device=coeffs.device)
        return coeffs[:, :, :n_weight], coeffs[:, :, n_weight:] if has_bias else None, members

    def stacked(p: tuple, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # every member's piece at depth s (the breakpoints are the members' common config)
        coeffs_w, coeffs_b, members = p
        i = piece(s)
        at = (slice(None), i) if i.dim() == 0 else (members, i)
        W = coeffs_w[at].view(-1, out_f, in_f)
        return _affine(h, W.transpose(1, 2), None if coeffs_b is None else coeffs_b[at].unsqueeze(1))

    def stacked_select(p: tuple, rows: torch.Tensor) -> tuple:
        return _rows(p[0], rows), _rows(p[1], rows), torch.arange(len(rows), device=rows.device)

    return BatchedLayer(stacked_prepare, stacked, stacked_select)
