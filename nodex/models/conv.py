"""Convolutional vector fields for image states: ``field.kind: conv`` (paper §E5).

Layout (every piece configurable)::

    [u →] [GN(c)] → Conv_kxk(c→h_1) → act → ... → Conv_kxk(h_{m-1}→h_m) → act
          → [GN(h_m)] → Conv1x1(h_m→out)

with ``c`` the state channels (plus the control's channels when data-controlled), GN a
GroupNorm (one group per channel by default: the paper's ``GroupNorm(c, c)``), ``k×k`` convs
with same padding and no bias, and a biased 1×1 output conv. ``out`` is the state's channels,
or one block of them for an n-th order model. The paper's layouts:

- CIFAR NODE  (state 3):  GN(3)–Conv(3→62)–Softplus–Conv(62→62)–Softplus–GN(62)–Conv1x1(62→3)
  ``hidden: [62, 62], norm_in: true, norm_out: true``
- CIFAR ANODE/IL (state 42): ``hidden: [42, 42]``; 2nd order: the same with out = 21
- MNIST NODE  (state 1):  GN(1)–Conv(1→48)–Softplus–Conv(48→48)–Softplus–Conv1x1(48→1)
  ``hidden: [48, 48], norm_out: false`` (21,391 parameters with a k=1 conv head)

Depth (``field.depth``): ``none`` (constant θ), ``concat`` (torchdyn's ``DepthCat``: a
constant-``s`` channel appended to the input of the convs in ``depth_layers``) or ``galerkin``
(those convs become GalConv2d with θ(s) = Σ α_j ψ_j(s)) or ``stacked`` (StackedConv2d: p pieces
of constant kernels), options in ``field.depth_options`` as for MLP fields (all in
:mod:`nodex.models.depth`); ``depth_layers`` indices count the k×k convs and then the 1×1
output conv; ``null`` = all.
Data control: the control ``u`` ``(B, C_u, H, W)`` is concatenated to ``z`` at the field's input.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from nodex.errors import ConfigError, config_key
from nodex.models.depth import check_depth, chosen_layers, depth_conv2d
from nodex.models.fields import FIELDS
from nodex.models.layers import make_activation


def group_norm(channels: int, groups: int | None) -> nn.GroupNorm:
    """``GroupNorm(groups, channels)``; ``groups=None`` means one group per channel.

    Raises:
        ValueError: ``groups`` does not divide ``channels``.
    """
    g = channels if groups is None else int(groups)
    if g <= 0 or channels % g:
        raise ValueError(
            f"norm_groups={groups} must divide the {channels} channels it normalises "
            "(or be null: one group per channel)"
        )
    return nn.GroupNorm(g, channels)


class ConvField(nn.Module):
    """Conv vector field ``f(s, z, u)`` on ``(B, C, H, W)`` states (see the module docstring).

    Args:
        state_channels: channels of ``z``.
        out_channels: channels of the output (``state_channels``, or a block for order n).
        hidden: output channels of each k×k conv.
        kernel_size: odd kernel size of the hidden convs (same padding).
        activation: activation after every hidden conv.
        norm_in, norm_out: GroupNorm at the input / before the 1×1 output conv.
        norm_groups: groups of every GroupNorm (``None``: one per channel).
        depth: depth kind (see :mod:`nodex.models.depth`); depth_layers: conv indices that see ``s``;
            depth_options: the kind's options.
        control_channels: channels of the control concatenated to ``z`` (0: none).
        bias: bias of the hidden convs; out_bias: bias of the 1×1 output conv.
        zero_init_last: zero the output conv (initial flow = identity).
        S: the horizon (Galërkin period and stacked pieces default to ``[0, S]``).

    Raises:
        ValueError: a bad argument (named as above).
    """

    def __init__(
        self,
        state_channels: int,
        out_channels: int,
        *,
        hidden: list[int],
        kernel_size: int = 3,
        activation: str = "softplus",
        norm_in: bool = True,
        norm_out: bool = True,
        norm_groups: int | None = None,
        depth: str = "none",
        depth_layers: list[int] | None = None,
        depth_options: dict | None = None,
        control_channels: int = 0,
        bias: bool = False,
        out_bias: bool = True,
        zero_init_last: bool = False,
        S: float = 1.0,
    ) -> None:
        super().__init__()
        check_depth(depth)
        if not hidden:
            raise ValueError("hidden must list at least one conv width for field.kind=conv (e.g. [32, 32])")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be a positive odd integer (same padding keeps H×W)")
        chosen = chosen_layers(depth_layers, len(hidden) + 1)

        def conv(i: int, c_in: int, c_out: int, k: int, with_bias: bool) -> nn.Module:
            kind = depth if i in chosen else "none"
            return depth_conv2d(kind, c_in, c_out, k, bias=with_bias, S=S, options=depth_options)

        c_in = state_channels + control_channels
        self.control_channels = control_channels
        self.norm_in = group_norm(c_in, norm_groups) if norm_in else nn.Identity()
        widths = [c_in, *hidden]
        self.convs = nn.ModuleList(conv(i, widths[i], widths[i + 1], kernel_size, bias) for i in range(len(hidden)))
        self.acts = nn.ModuleList(make_activation(activation) for _ in hidden)
        self.norm_out = group_norm(hidden[-1], norm_groups) if norm_out else nn.Identity()
        self.out = conv(len(hidden), hidden[-1], out_channels, 1, out_bias)
        if zero_init_last:
            for p in self.out.parameters():
                nn.init.zeros_(p)

    def forward(self, s: torch.Tensor, z: torch.Tensor, u: torch.Tensor | None = None) -> torch.Tensor:
        """``z``: ``(B, C, H, W)``; ``u``: ``(B, C_u, H, W)`` or ``None`` -> ``(B, out, H, W)``."""
        h = z if self.control_channels == 0 else torch.cat([z, u], dim=1)
        h = self.norm_in(h)
        for conv, act in zip(self.convs, self.acts):
            h = act(conv(s, h))
        return self.out(s, self.norm_out(h))


@FIELDS.register("conv")
def build_conv_field(
    cfg: DictConfig,
    state_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    control_shape: tuple[int, ...] | None,
    S: float,
) -> nn.Module:
    if len(state_shape) != 3:
        raise ConfigError(
            f"model.field.kind=conv needs an image state (C, H, W), got shape {tuple(state_shape)}; "
            "use field.kind=mlp for vectors"
        )
    expected = cfg.get("in_channels")
    if expected is not None and int(expected) != state_shape[0]:
        raise ConfigError(
            f"model.field.in_channels={expected} but the input layer gives a state of {state_shape[0]} channels "
            f"(state shape {tuple(state_shape)}); fix model.input_layer (width / n_a) or model.field.in_channels"
        )
    control_channels = 0
    if control_shape is not None:
        if len(control_shape) != 3 or tuple(control_shape[1:]) != tuple(state_shape[1:]):
            raise ConfigError(
                "field.kind=conv concatenates the control as channels, so it needs shape "
                f"(C_u, {state_shape[1]}, {state_shape[2]}); got {tuple(control_shape)}"
            )
        control_channels = int(control_shape[0])
    with config_key("model.field"):
        return _conv_field(cfg, state_shape[0], out_shape[0], control_channels, S)


def _conv_field(cfg: DictConfig, state_channels: int, out_channels: int, control_channels: int, S: float) -> ConvField:
    return ConvField(
        state_channels,
        out_channels,
        hidden=[int(h) for h in cfg.hidden],
        kernel_size=int(cfg.get("kernel_size", 3)),
        activation=cfg.get("activation", "softplus"),
        norm_in=bool(cfg.get("norm_in", True)),
        norm_out=bool(cfg.get("norm_out", True)),
        norm_groups=cfg.get("norm_groups"),
        depth=cfg.get("depth", "none"),
        depth_layers=None if cfg.get("depth_layers") is None else list(cfg.depth_layers),
        depth_options=dict(cfg.get("depth_options") or {}),
        control_channels=control_channels,
        bias=bool(cfg.get("bias", False)),
        out_bias=bool(cfg.get("out_bias", True)),
        zero_init_last=bool(cfg.get("zero_init_last", False)),
        S=S,
    )
