"""Depth-aware linear layers: the ``field.depth`` slot.

Every layer is called as ``layer(s, h)`` with ``s`` the depth (a 0-d tensor, or ``(B,)`` for
per-sample depths) and ``h`` of shape ``(B, in_features)``. New depth variants register a
factory ``factory(in_features, out_features, *, bias, S, options) -> nn.Module`` here.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from nodex.registry import Registry

DEPTH_LAYERS: Registry[Callable[..., nn.Module]] = Registry("model.field.depth")

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


def linear_from_flat(theta: torch.Tensor, h: torch.Tensor, out_features: int, in_features: int, bias: bool) -> torch.Tensor:
    """A linear map whose weight (and bias) are packed in ``theta``: ``(n_params,)`` shared by
    the batch, or ``(B, n_params)`` per sample (per-sample depths). ``h``: ``(B, in_features)``."""
    n_weight = out_features * in_features
    if theta.dim() == 1:
        W = theta[:n_weight].view(out_features, in_features)
        return nn.functional.linear(h, W, theta[n_weight:] if bias else None)
    W = theta[:, :n_weight].view(-1, out_features, in_features)
    out = torch.bmm(W, h.unsqueeze(-1)).squeeze(-1)
    return out + theta[:, n_weight:] if bias else out


def conv2d_from_flat(theta: torch.Tensor, h: torch.Tensor, out_channels: int, in_channels: int, kernel_size: int, bias: bool, stride: int, padding: int) -> torch.Tensor:
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


@DEPTH_LAYERS.register("none")
def _static(in_features: int, out_features: int, *, bias: bool, S: float, options: dict[str, Any]) -> nn.Module:
    return StaticLinear(in_features, out_features, bias=bias)


@DEPTH_LAYERS.register("concat")
def _concat(in_features: int, out_features: int, *, bias: bool, S: float, options: dict[str, Any]) -> nn.Module:
    return DepthConcatLinear(in_features, out_features, bias=bias)
