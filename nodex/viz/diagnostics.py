"""The paper's diagnostic plots (matplotlib, Agg): decision maps and depth trajectories.

Every function returns a ``matplotlib.figure.Figure``; :func:`diagnostics` picks the plots
that fit the data and sends them to a :class:`~nodex.train.logs.RunLogger`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@torch.no_grad()
def decision_map(model, task, X: torch.Tensor, y: torch.Tensor, *, grid: int = 150, margin: float = 0.5) -> Figure:
    """Predicted class probability (or scalar readout clipped to [0, 1]) over the 2-D input
    plane, with the data on top. ``X``: ``(N, 2)``, ``y``: ``(N,)``."""
    model.eval()
    lo = (X.min(0).values - margin).tolist()
    hi = (X.max(0).values + margin).tolist()
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], grid), torch.linspace(lo[1], hi[1], grid), indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(X)
    y_hat = model(pts).y_hat
    score = y_hat[:, 0].clamp(0, 1) if y_hat.shape[1] == 1 else y_hat.softmax(1)[:, 1]
    model.train()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.contourf(gx.numpy(), gy.numpy(), score.reshape(grid, grid).cpu().numpy(), levels=20, cmap="RdBu_r", vmin=0, vmax=1)
    ax.scatter(*X[:400].cpu().T.numpy(), c=y[:400].cpu().numpy(), cmap="coolwarm", s=4, edgecolors="none")
    fig.colorbar(im, ax=ax)
    ax.set(title="decision map", xlabel="x1", ylabel="x2")
    return fig


@torch.no_grad()
def depth_trajectories(model, X: torch.Tensor, color: torch.Tensor, *, n_points: int = 200, n_depths: int = 20) -> Figure:
    """State trajectories over depth: the first two state coordinates against ``s`` for up
    to ``n_points`` inputs, coloured by ``color`` (labels or errors). ``X``: ``(N, d)``."""
    model.eval()
    s = torch.linspace(0, float(model.settings.S), n_depths)
    traj = model.trajectory(X[:n_points], s).cpu()  # (T, B, n_z)
    model.train()
    flat = traj.reshape(traj.shape[0], traj.shape[1], -1)
    c = color[:n_points].cpu().numpy()
    fig, axes = plt.subplots(1, min(2, flat.shape[2]), figsize=(9, 3.5), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for b in range(flat.shape[1]):
            ax.plot(s.numpy(), flat[:, b, i].numpy(), color=plt.cm.coolwarm(float(c[b]) / max(1.0, float(c.max()))), lw=0.6, alpha=0.6)
        ax.set(xlabel="depth s", ylabel=f"z{i + 1}(s)", title=f"depth trajectories, z{i + 1}")
    fig.tight_layout()
    return fig


def diagnostics(model, data, task, logger, step: int) -> None:
    """Plots that fit the data: for 2-D classification a decision map and trajectories."""
    X, y = data.test
    if X.dim() == 2 and X.shape[1] == 2 and getattr(task, "n_classes", None):
        logger.figure("plots/decision_map", decision_map(model, task, X, y), step)
    if X.dim() == 2 and getattr(task, "n_classes", None):
        logger.figure("plots/depth_trajectories", depth_trajectories(model, X, y.float()), step)
    from nodex.viz.depth import depth_diagnostics  # θ(s) of depth-variant fields, tracking plots

    depth_diagnostics(model, data, task, logger, step)
    from nodex.viz.flows import flow_diagnostics  # horizons, 1-D regression, vector fields, CNF densities

    flow_diagnostics(model, data, task, logger, step)
