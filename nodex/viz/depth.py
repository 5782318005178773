"""Plots for depth-variant models: the paper's "parameters evolution" panel θ(s) and, for
the tracking task, trajectories against the reference γ(s).

A model that declares ``depth_variant`` (see :mod:`nodex.viz.protocol`) has layers with a
``theta(s)`` method returning their flat parameters at depths ``s`` ``(T,)`` as
``(T, n_params)`` (Galërkin and stacked layers); :func:`parameter_evolution` draws them, each
entry named by the layer's path and the weight or bias entry it is (:func:`parameter_name`).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from nodex.viz.protocol import horizon_of  # noqa: E402
from nodex.viz.style import LEGEND_FONTSIZE, new_figure, outside_legend  # noqa: E402


def depth_variant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every sub-module whose parameters vary with depth (a ``theta(s)``
    method is the depth-variant layer's interface)."""
    return [(name, m) for name, m in model.named_modules() if callable(getattr(m, "theta", None))]


def _weight_shape(layer: nn.Module) -> tuple[int, ...] | None:
    """The shape of the weight packed first in a layer's flat θ: ``(out, in)`` of a linear layer, ``(C_out, C_in,
    k, k)`` of a convolution; ``None`` for a layer that says neither."""
    if hasattr(layer, "out_features") and hasattr(layer, "in_features"):
        return int(layer.out_features), int(layer.in_features)
    if all(hasattr(layer, key) for key in ("out_channels", "in_channels", "kernel_size")):
        k = int(layer.kernel_size)
        return int(layer.out_channels), int(layer.in_channels), k, k
    return None


def parameter_name(name: str, layer: nn.Module, j: int) -> str:
    """The name of entry ``j`` of a depth-variant layer's flat θ, as ``nn.Linear``/``nn.Conv2d`` name their
    parameters: ``NAME.weight[o, i]`` (``[o, i, ky, kx]`` for a convolution), then ``NAME.bias[o]``;
    ``NAME.θ[j]`` for a layer of another packing."""
    shape = _weight_shape(layer)
    if shape is None:
        return f"{name}.θ[{j}]"
    n_weight = math.prod(shape)
    if j >= n_weight:
        return f"{name}.bias[{j - n_weight}]"
    index, rest = [], j
    for size in reversed(shape):
        rest, i = divmod(rest, size)
        index.append(i)
    return f"{name}.weight[{', '.join(map(str, reversed(index)))}]"


def _most_varying(theta: torch.Tensor, k: int) -> list[int]:
    """The ``k`` columns of ``theta`` ``(T, n)`` whose values range most over depth (lowest index first on ties),
    in index order."""
    spread = theta.max(0).values - theta.min(0).values
    order = sorted(range(theta.shape[1]), key=lambda j: (-float(spread[j]), j))
    return sorted(order[:k])


@torch.no_grad()
def parameter_evolution(model: nn.Module, S: float, *, n_points: int = 300, per_layer: int = 5) -> Figure | None:
    """θ(s) over s ∈ [0, S]: in one panel per depth-variant layer, the ``per_layer`` entries of its parameters
    that vary most over depth, each labelled with its name (``field.layers.0.weight[3, 1]``) in a legend beside
    the panel. ``None`` when the model has no such layer."""
    layers = depth_variant_layers(model)
    if not layers:
        return None
    fig, axes = new_figure(len(layers), 1, figsize=(8.0, 2.9 * len(layers)), squeeze=False, sharex=True)
    for ax, (name, layer) in zip(axes[:, 0], layers):
        ref = next(layer.parameters())
        s = torch.linspace(0.0, float(S), n_points, dtype=ref.dtype, device=ref.device)
        theta = layer.theta(s).cpu()  # (T, n_params)
        chosen = _most_varying(theta, min(per_layer, theta.shape[1]))
        for j in chosen:
            ax.plot(s.cpu().numpy(), theta[:, j].numpy(), lw=1.4, label=parameter_name(name, layer, j))
        ax.set(ylabel="θ(s)", title=f"θ(s) of {name}: the {len(chosen)} of {theta.shape[1]} entries that vary most")
        ax.legend(fontsize=LEGEND_FONTSIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes[-1, 0].set_xlabel("depth s")
    return fig


@torch.no_grad()
def tracking_figure(model: nn.Module, task, X: torch.Tensor, *, n_points: int = 50) -> Figure:
    """z_1(s), z_2(s) of up to ``n_points`` initial conditions over ``[0, task.eval_horizon]``
    with the reference γ(s) dashed and the training horizon S marked."""
    model.eval()
    n = int(task.eval_horizon * task.points_per_unit) + 1
    s = torch.linspace(0.0, task.eval_horizon, n, dtype=X.dtype, device=X.device)
    traj = model.trajectory(X[:n_points], s).reshape(n, min(n_points, X.shape[0]), -1)[:, :, task.coords].cpu()
    S = horizon_of(model)
    gamma = task.reference.to(X)(s).cpu()
    model.train()
    fig, axes = new_figure(1, gamma.shape[1], figsize=(5 * gamma.shape[1], 3.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        lines = ax.plot(s.cpu().numpy(), traj[:, :, i].numpy(), color="tab:blue", lw=0.5, alpha=0.5)
        lines[0].set_label("z(s) of test inputs")
        ax.plot(s.cpu().numpy(), gamma[:, i].numpy(), "k--", lw=1.5, label="target γ(s)")
        ax.axvline(S, color="tab:red", lw=1, label=f"training horizon S = {S:g}")
        coord = task.coords[i] + 1
        ax.set(xlabel="depth s", ylabel=f"z{coord}(s)", title=f"tracking, coordinate {coord}")
    outside_legend(fig, where="lower center", ncol=3)
    return fig
