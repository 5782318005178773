"""Depth-aware layers and the flat-parameter maps they share.

Every layer is called as ``layer(s, h)`` with ``s`` the depth (a 0-d tensor, or ``(B,)`` for
per-sample depths) and ``h`` of shape ``(B, in_features)`` (``(B, C, H, W)`` for convolutions).
Which layer a ``field.depth`` kind uses is decided in :mod:`nodex.models.depth` only.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


def depth_column(s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The depth as a ``(B, 1)`` column matching ``h``'s batch, dtype and device."""
    return s.to(h).reshape(-1, 1).expand(h.shape[0], 1)


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (see :data:`ACTIVATIONS`).

    Raises:
        ValueError: an unknown name.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is unknown; choose one of: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


def linear_from_flat(
    theta: torch.Tensor, h: torch.Tensor, out_features: int, in_features: int, bias: bool
) -> torch.Tensor:
    """A linear map whose weight (and bias) are packed in ``theta``: ``(n_params,)`` shared by
    the batch, or ``(B, n_params)`` per sample (per-sample depths). ``h``: ``(B, in_features)``."""
    n_weight = out_features * in_features
    if theta.dim() == 1:
        W = theta[:n_weight].view(out_features, in_features)
        return nn.functional.linear(h, W, theta[n_weight:] if bias else None)
    W = theta[:, :n_weight].view(-1, out_features, in_features)
    out = torch.bmm(W, h.unsqueeze(-1)).squeeze(-1)
    return out + theta[:, n_weight:] if bias else out


def conv2d_from_flat(
    theta: torch.Tensor, h: torch.Tensor, out_channels: int, in_channels: int, kernel_size: int, bias: bool,
    stride: int, padding: int,
) -> torch.Tensor:
    """A 2-D convolution whose kernel (and bias) are packed in ``theta``: ``(n_params,)``, or
    ``(B, n_params)`` per sample (one grouped convolution, groups = B). ``h``: ``(B, C_in, H, W)``."""
    k = kernel_size
    n_weight = out_channels * in_channels * k * k
    if theta.dim() == 1:
        W = theta[:n_weight].view(out_channels, in_channels, k, k)
        return nn.functional.conv2d(h, W, theta[n_weight:] if bias else None, stride, padding)
    B = h.shape[0]
    W = theta[:, :n_weight].reshape(B * out_channels, in_channels, k, k)
    b = theta[:, n_weight:].reshape(-1) if bias else None
    out = nn.functional.conv2d(h.reshape(1, B * in_channels, *h.shape[2:]), W, b, stride, padding, groups=B)
    return out.view(B, out_channels, *out.shape[2:])


class StaticLinear(nn.Linear):
    """``nn.Linear`` that ignores the depth: constant parameters (``depth: none``)."""

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return nn.functional.linear(h, self.weight, self.bias)


class DepthConcatLinear(nn.Linear):
    """Linear layer on ``[h, s]``: the paper's depth-concatenation (``depth: concat``).

    Parameters stay constant in depth; ``s`` enters as one extra input feature.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features + 1, out_features, bias=bias)

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # W [h; s] + b = W_h h + w_s s + b: avoids materialising the concatenation.
        out = nn.functional.linear(h, self.weight[:, :-1], self.bias)
        return out + depth_column(s, h) * self.weight[:, -1]


class DepthConv2d(nn.Conv2d):
    """``Conv2d`` (same padding) called as ``layer(s, h)``; with ``depth_concat`` a constant-``s``
    channel is appended to ``h`` (one extra input channel), else ``s`` is ignored.
    ``h``: ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool, depth_concat: bool
    ) -> None:
        super().__init__(
            in_channels + int(depth_concat), out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.depth_concat = depth_concat

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.depth_concat:
            col = s.to(h).reshape(-1, 1, 1, 1).expand(h.shape[0], 1, *h.shape[2:])
            h = torch.cat([h, col], dim=1)
        return super().forward(h)


def batched_affine(h: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h @ W_k^T + b_k`` per member: ``h`` ``(K, B, in)``, ``W`` ``(K, out, in)``, ``b`` ``(K, out)``."""
    if b is None:
        return torch.bmm(h, W.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))


def batched_linear_from_flat(
    theta: torch.Tensor, h: torch.Tensor, out_features: int, in_features: int, bias: bool
) -> torch.Tensor:
    """:func:`linear_from_flat` per member: ``theta`` ``(K, n_params)``, ``h`` ``(K, B, in)``."""
    n_weight = out_features * in_features
    W = theta[:, :n_weight].view(-1, out_features, in_features)
    return batched_affine(h, W, theta[:, n_weight:] if bias else None)
