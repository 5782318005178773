"""Plots for depth-variant models: the paper's "parameters evolution" panel θ(s) and, for
the tracking task, trajectories against the reference γ(s).

A depth-variant layer is any sub-module with a ``theta(s)`` method returning its flat
parameters at depths ``s`` ``(T,)`` as ``(T, n_params)`` (Galërkin and stacked layers).
:func:`depth_diagnostics` is called from :func:`nodex.viz.diagnostics`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402


def depth_variant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, layer)`` for every sub-module whose parameters vary with depth."""
    return [(name, m) for name, m in model.named_modules() if callable(getattr(m, "theta", None))]


@torch.no_grad()
def parameter_evolution(model: nn.Module, S: float, *, n_points: int = 300, per_layer: int = 6) -> Figure | None:
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
        ax.legend(fontsize=6, loc="best")
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
    gamma = task.reference.to(X)(s).cpu()
    model.train()
    fig, axes = plt.subplots(1, gamma.shape[1], figsize=(5 * gamma.shape[1], 3.2), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.plot(s.cpu().numpy(), traj[:, :, i].numpy(), color="tab:blue", lw=0.5, alpha=0.5)
        ax.plot(s.cpu().numpy(), gamma[:, i].numpy(), "k--", lw=1.5, label="γ(s)")
        ax.axvline(float(model.settings.S), color="tab:red", lw=1, label="training horizon")
        ax.set(xlabel="depth s", ylabel=f"z{task.coords[i] + 1}(s)", title=f"tracking, coordinate {task.coords[i] + 1}")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def depth_diagnostics(model: nn.Module, data, task, logger, step: int) -> None:
    """θ(s) for depth-variant fields; trajectories vs γ(s) for the tracking task."""
    settings = getattr(model, "settings", None)
    if settings is None:
        return
    fig = parameter_evolution(model, float(settings.S))
    if fig is not None:
        logger.figure("plots/parameters_evolution", fig, step)
    if getattr(task, "reference", None) is not None and hasattr(model, "trajectory"):
        logger.figure("plots/tracking", tracking_figure(model, task, data.test[0]), step)
