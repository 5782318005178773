"""Classification figures: the decision map over the input plane and the depth trajectories
z_i(s), both on a class-stratified sample, coloured by class with a legend off the data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from nodex.viz.protocol import horizon_of, stratified  # noqa: E402
from nodex.viz.style import (  # noqa: E402
    CLASS_COLOURS, class_colour, class_handles, new_figure, outside_legend, scatter_classes,
)

READOUTS = ("auto", "probability", "value")


Limits = tuple[float, float, float, float]  # (x1 from, x1 to, x2 from, x2 to): a 2-D figure's plotted range


def _grid(X: torch.Tensor, grid: int, margin: float,
          limits: Limits | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(gx, gy)`` ``(grid, grid)`` over ``limits`` (default: the bounding box of ``X`` ``(N, 2)`` and ``margin``)
    and the points ``(grid², 2)``."""
    lo = [limits[0], limits[2]] if limits else (X.min(0).values - margin).tolist()
    hi = [limits[1], limits[3]] if limits else (X.max(0).values + margin).tolist()
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], grid), torch.linspace(lo[1], hi[1], grid), indexing="xy")
    return gx, gy, torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(X)


def binary_score(y_hat: torch.Tensor, readout: str = "auto") -> tuple[torch.Tensor, float, str]:
    """What a two-class decision map colours: ``(score (N,), boundary, colourbar label)``.

    ``readout``: ``probability`` (the outputs are logits: P(class 1) from their softmax), ``value`` (a regression
    readout: the raw output ŷ for one output, thresholded at 0.5 as the paper's scalar MSE readout; ŷ₁ − ŷ₀ for
    two), ``auto``: ``value`` for one output, else ``probability``."""
    if readout not in READOUTS:
        raise ValueError(f"readout={readout!r}; choose one of: {', '.join(READOUTS)}")
    if readout == "auto":
        readout = "value" if y_hat.shape[1] == 1 else "probability"
    if readout == "probability":
        if y_hat.shape[1] == 1:
            raise ValueError("readout='probability' needs one logit per class; this model has one output")
        return y_hat.softmax(1)[:, 1], 0.5, "P(class 1) (softmax of the readout)"
    if y_hat.shape[1] == 1:
        return y_hat[:, 0], 0.5, "readout ŷ (raw output; class 1 where ŷ > 0.5)"
    return y_hat[:, 1] - y_hat[:, 0], 0.0, "readout ŷ₁ − ŷ₀ (raw outputs; class 1 where > 0)"


def _levels(score: np.ndarray, boundary: float, probability: bool) -> np.ndarray:
    """Contour levels: [0, 1] for a probability; else symmetric about the boundary, so that its colour is the
    middle of the diverging scale."""
    if probability:
        return np.linspace(0.0, 1.0, 21)
    half = max(float(np.abs(score - boundary).max()), 1e-6)
    return np.linspace(boundary - half, boundary + half, 21)


@torch.no_grad()
def decision_map(model, X: torch.Tensor, y: torch.Tensor, n_classes: int, *, readout: str = "auto",
                 n_points: int = 400, grid: int = 150, margin: float = 0.5, limits: Limits | None = None) -> Figure:
    """The classifier over the input plane (``limits``: its range, default the data's with ``margin``), with a
    class-stratified sample of ``n_points`` of ``X`` ``(N, 2)``, ``y`` ``(N,)`` on top. Two classes: the score of :func:`binary_score` (``readout``: what the outputs are)
    with its decision boundary, the colourbar labelled with what it shows; more classes: the predicted class."""
    model.eval()
    gx, gy, pts = _grid(X, grid, margin, limits)
    y_hat = model(pts).y_hat
    model.train()
    fig, ax = new_figure(figsize=(5.4, 4.8))
    extent = (float(gx.min()), float(gx.max()), float(gy.min()), float(gy.max()))
    if n_classes == 2:
        score, boundary, label = binary_score(y_hat, readout)
        score = score.reshape(grid, grid).cpu().numpy()
        levels = _levels(score, boundary, label.startswith("P("))
        im = ax.contourf(gx.numpy(), gy.numpy(), score, levels=levels, cmap="PRGn", alpha=0.75, extend="neither")
        ax.contour(gx.numpy(), gy.numpy(), score, levels=[boundary], colors="k", linewidths=1.0)
        cbar = fig.colorbar(im, ax=ax, label=label)
        ticks = MaxNLocator(7).tick_values(levels[0], levels[-1])
        cbar.set_ticks(ticks[(ticks >= levels[0] - 1e-9) & (ticks <= levels[-1] + 1e-9)])
    else:
        pred = y_hat.argmax(1).reshape(grid, grid).cpu().numpy()
        cmap = ListedColormap([CLASS_COLOURS[k % len(CLASS_COLOURS)] for k in range(n_classes)])
        im = ax.imshow(pred, origin="lower", cmap=cmap, alpha=0.3, vmin=-0.5, vmax=n_classes - 0.5, aspect="auto",
                       extent=extent)
        fig.colorbar(im, ax=ax, label="predicted class (argmax of the readout)", ticks=range(n_classes))
    idx = stratified(y, n_points)
    scatter_classes(ax, X[idx].cpu().numpy(), y[idx].cpu().numpy())
    ax.set(xlim=extent[:2], ylim=extent[2:], title="decision map (test points)", xlabel="x1", ylabel="x2")
    outside_legend(fig, where="lower center", ncol=min(n_classes, 6), markerscale=1.4)
    return fig


@torch.no_grad()
def trajectories(model, X: torch.Tensor, y: torch.Tensor, *, n_points: int = 120, n_depths: int = 40) -> Figure:
    """z_1(s), z_2(s) over depth s ∈ [0, S] for a class-stratified sample of ``n_points`` inputs
    ``X`` ``(N, d)``, one colour per class ``y`` ``(N,)``."""
    model.eval()
    idx = stratified(y, n_points)
    s = torch.linspace(0, horizon_of(model), n_depths)
    traj = model.trajectory(X[idx], s).cpu()  # (T, B, *state)
    model.train()
    flat = traj.reshape(traj.shape[0], traj.shape[1], -1)
    labels = y[idx].cpu().long().tolist()
    fig, axes = new_figure(1, min(2, flat.shape[2]), figsize=(10.5, 3.8), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for b, k in enumerate(labels):
            ax.plot(s.numpy(), flat[:, b, i].numpy(), color=class_colour(k), lw=0.7, alpha=0.6)
        ax.set(xlabel="depth s", ylabel=f"z{i + 1}(s)", title=f"depth trajectories, z{i + 1}")
    outside_legend(fig, class_handles(labels), where="right upper")
    return fig
