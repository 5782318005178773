"""Classification figures: the decision map over the input plane and the depth trajectories
z_i(s), both on a class-stratified sample, coloured by class with a legend."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nodex.viz.protocol import horizon_of, stratified  # noqa: E402
from nodex.viz.style import CLASS_COLOURS, class_colour, class_legend, scatter_classes  # noqa: E402


def _grid(X: torch.Tensor, grid: int, margin: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(gx, gy)`` ``(grid, grid)`` over the bounding box of ``X`` ``(N, 2)`` and the points ``(grid², 2)``."""
    lo = (X.min(0).values - margin).tolist()
    hi = (X.max(0).values + margin).tolist()
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], grid), torch.linspace(lo[1], hi[1], grid), indexing="xy")
    return gx, gy, torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(X)


@torch.no_grad()
def decision_map(model, X: torch.Tensor, y: torch.Tensor, n_classes: int, *, n_points: int = 400,
                 grid: int = 150, margin: float = 0.5) -> Figure:
    """Two classes: P(class 1) (or the scalar readout clipped to [0, 1]) over the input plane,
    with the 0.5 boundary; more classes: the predicted class. ``X``: ``(N, 2)``, ``y``: ``(N,)``;
    a class-stratified sample of ``n_points`` is drawn on top."""
    model.eval()
    gx, gy, pts = _grid(X, grid, margin)
    y_hat = model(pts).y_hat
    model.train()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    if n_classes == 2:
        score = y_hat[:, 0].clamp(0, 1) if y_hat.shape[1] == 1 else y_hat.softmax(1)[:, 1]
        score = score.reshape(grid, grid).cpu().numpy()
        im = ax.contourf(gx.numpy(), gy.numpy(), score, levels=20, cmap="PRGn", vmin=0, vmax=1, alpha=0.75)
        ax.contour(gx.numpy(), gy.numpy(), score, levels=[0.5], colors="k", linewidths=1.0)
        fig.colorbar(im, ax=ax, label="P(class 1)")
    else:
        pred = y_hat.argmax(1).reshape(grid, grid).cpu().numpy()
        cmap = ListedColormap([CLASS_COLOURS[k % len(CLASS_COLOURS)] for k in range(n_classes)])
        im = ax.imshow(pred, origin="lower", cmap=cmap, alpha=0.3, vmin=-0.5, vmax=n_classes - 0.5, aspect="auto",
                       extent=(float(gx.min()), float(gx.max()), float(gy.min()), float(gy.max())))
        fig.colorbar(im, ax=ax, label="predicted class", ticks=range(n_classes))
    idx = stratified(y, n_points)
    scatter_classes(ax, X[idx].cpu().numpy(), y[idx].cpu().numpy())
    ax.legend(fontsize=7, loc="upper right")
    ax.set(title="decision map (test points)", xlabel="x1", ylabel="x2")
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
    fig, axes = plt.subplots(1, min(2, flat.shape[2]), figsize=(10, 3.8), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for b, k in enumerate(labels):
            ax.plot(s.numpy(), flat[:, b, i].numpy(), color=class_colour(k), lw=0.7, alpha=0.6)
        ax.set(xlabel="depth s", ylabel=f"z{i + 1}(s)", title=f"depth trajectories, z{i + 1}")
        class_legend(ax, labels)
    fig.tight_layout()
    return fig
