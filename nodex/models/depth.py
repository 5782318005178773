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
    DepthConcatLinear, DepthConv2d, StaticLinear, batched_affine, batched_linear_from_flat,
)
from nodex.models.stacked import StackedConv2d, StackedLinear, stacked_boundaries

DEPTHS = ("concat", "galerkin", "none", "stacked")

# ``layer(tensors, s, h)``: one layer for all members; ``tensors`` are the stacked member tensors.
BatchedLayer = Callable[[Sequence[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def check_depth(depth: str) -> None:
    """Raises ``ValueError`` for an unknown depth kind."""
    if depth not in DEPTHS:
        raise ValueError(f"depth={depth!r} is unknown; choose one of: {', '.join(DEPTHS)}")


def chosen_layers(depth_layers: Sequence[int] | None, n_layers: int) -> set[int]:
    """Indices (modulo ``n_layers``, so ``-1`` is the last) of the layers that see the depth; ``None``: all."""
    return set(range(n_layers)) if depth_layers is None else {i % n_layers for i in depth_layers}


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


def batched_linear(layer: nn.Module, prefix: str, index: dict[str, int]) -> BatchedLayer | None:
    """The member-batched form of one linear layer of a field, or ``None`` (then only ``vmap`` applies).

    Args:
        layer: the template member's layer (any :func:`depth_linear` kind).
        prefix: its name in the member model, with a trailing dot (``"field.layers.0."``).
        index: member tensor name -> position in the ``tensors`` the returned function receives.

    The returned ``layer(tensors, s, h)`` takes ``h`` ``(K, B, in)`` and ``s`` 0-d or ``(K,)`` (each member's
    depth) -> ``(K, B, out)``:
    the same arithmetic as each member's own layer.
    """
    kind = type(layer)
    if kind in (StaticLinear, DepthConcatLinear):
        w, b = index[prefix + "weight"], index.get(prefix + "bias")
        if kind is StaticLinear:
            return lambda t, s, h: batched_affine(h, t[w], None if b is None else t[b])

        def concat(t: Sequence[torch.Tensor], s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            W = t[w]  # [W_h, w_s]: the depth enters as one extra input feature
            out = batched_affine(h, W[:, :, :-1], None if b is None else t[b])
            depth = s.to(h).reshape(-1, 1, 1).expand(*h.shape[:2], 1)  # as depth_column: a (B, 1) column per member
            return out + depth * W[:, :, -1].unsqueeze(1)

        return concat
    if kind is GalLinear and layer.basis.dilation is None and layer.basis.shift is None:
        a, shape, basis = index[prefix + "coeffs"], (layer.out_features, layer.in_features, layer.has_bias), layer.basis

        def galerkin(t: Sequence[torch.Tensor], s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            alpha = t[a]  # (K, m, n_params); ψ(s) has no member parameters (buffers are constants)
            psi = basis(s.to(alpha.dtype))  # (m,), or (K, m) for per-member depths
            theta = torch.matmul(psi, alpha) if psi.dim() == 1 else torch.matmul(psi.unsqueeze(1), alpha).squeeze(1)
            return batched_linear_from_flat(theta, h, *shape)

        return galerkin
    if kind is StackedLinear:
        c, shape, piece = index[prefix + "coeffs"], (layer.out_features, layer.in_features, layer.has_bias), layer.piece

        def stacked(t: Sequence[torch.Tensor], s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            # every member's piece at depth s (the breakpoints are the members' common config)
            p = piece(s)
            coeffs = t[c][:, p] if p.dim() == 0 else t[c][torch.arange(len(p), device=p.device), p]
            return batched_linear_from_flat(coeffs, h, *shape)

        return stacked
    return None
