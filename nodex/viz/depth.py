"""Plots for depth-variant models: the paper's "parameters evolution" panel θ(s) and, for
the tracking task, trajectories against the reference γ(s).

A model that declares ``depth_variant`` (see :mod:`nodex.viz.protocol`) has layers with a
``theta(s)`` method returning their flat parameters at depths ``s`` ``(T,)`` as
``(T, n_params)`` (Galërkin and stacked layers); :func:`parameter_evolution` draws them.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from nodex.viz.protocol import horizon_of  # noqa: E402


def depth_variant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every sub-module whose parameters vary with depth (a ``theta(s)``
    method is the depth-variant layer's interface)."""
    return [(name, m) for name, m in model.named_modules() if callable(getattr(m, "theta", None))]


@torch.no_grad()
def parameter_evolution(model: nn.Module, S: float, *, n_points: int = 300,
                        per_layer: int = 6) -> Figure | None:
    """θ(s) over s ∈ [0, S]: ``per_layer`` evenly chosen entries of each depth-variant layer's
    flat parameters (one panel per layer). ``None`` when the model has no such layer."""
    layers = depth_variant_layers(model)
    if not layers:
        return None
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 3.5), squeeze=False)
    for ax, (name, layer) in zip(axes[0], layers):
        ref = next(layer.parameters())
        s = torch.linspace(0.0, float(S), n_points, dtype=ref.dtype, device=ref.device)
        theta = layer.theta(s).cpu()  # (T, n_params)
        idx = torch.linspace(0, theta.shape[1] - 1, min(per_layer, theta.shape[1])).round().long().unique()
        for i in idx.tolist():
            ax.plot(s.cpu().numpy(), theta[:, i].numpy(), lw=1.2, label=f"θ[{i}]")
        ax.set(xlabel="depth s", ylabel="θ(s)", title=f"parameters evolution: {name}")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: curves stay visible
    fig.tight_layout()
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
    fig, axes = plt.subplots(1, gamma.shape[1], figsize=(5 * gamma.shape[1], 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        lines = ax.plot(s.cpu().numpy(), traj[:, :, i].numpy(), color="tab:blue", lw=0.5, alpha=0.5)
        lines[0].set_label("z(s) of test inputs")
        ax.plot(s.cpu().numpy(), gamma[:, i].numpy(), "k--", lw=1.5, label="target γ(s)")
        ax.axvline(S, color="tab:red", lw=1, label=f"training horizon S = {S:g}")
        coord = task.coords[i] + 1
        ax.set(xlabel="depth s", ylabel=f"z{coord}(s)", title=f"tracking, coordinate {coord}")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig
