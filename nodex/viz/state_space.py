"""2-D state-space figures (the paper's Figures 3 and 5): trajectories z(s) in the plane over
the learned vector field. An uncontrolled field is one field for all inputs; a data-controlled
field f(s, z, u(x)) or a learned horizon S(x) is drawn per input, one panel each."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from nodex.viz.protocol import horizon_of, stratified  # noqa: E402
from nodex.viz.style import class_colour, class_legend, class_marker  # noqa: E402


def _box(traj: torch.Tensor, pad: float = 0.3) -> tuple[list[float], list[float]]:
    flat = traj.reshape(-1, 2)
    return (flat.min(0).values - pad).tolist(), (flat.max(0).values + pad).tolist()


def _quiver(ax: Axes, model, depth: float, lo, hi, u: torch.Tensor | None, like: torch.Tensor, grid: int = 15) -> None:
    """The field f(depth, z, u) on a ``grid × grid`` lattice of the box ``[lo, hi]``; ``u``: ``(1, ...)``
    (one input's control, repeated) or ``None``."""
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], grid), torch.linspace(lo[1], hi[1], grid), indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(like)
    u_all = None if u is None else u.expand(pts.shape[0], *u.shape[1:])
    v = model.field(torch.tensor(depth).to(like), pts, u_all).cpu()
    ax.quiver(pts[:, 0].cpu().numpy(), pts[:, 1].cpu().numpy(), v[:, 0].numpy(), v[:, 1].numpy(),
              color="0.55", alpha=0.8, width=0.003)


def _coords(x: torch.Tensor) -> str:
    """One input's first coordinates, for a panel title."""
    flat = x.reshape(-1).tolist()
    return ", ".join(f"{v:.2f}" for v in flat[:3]) + (", …" if len(flat) > 3 else "")


def _path(ax: Axes, z: torch.Tensor, k: int, lw: float = 0.8, alpha: float = 0.7) -> None:
    """One trajectory ``z`` ``(T, 2)``: a line, its start (open marker) and end (filled)."""
    z = z.cpu().numpy()
    ax.plot(z[:, 0], z[:, 1], color=class_colour(k), lw=lw, alpha=alpha)
    ax.scatter(z[:1, 0], z[:1, 1], s=10, facecolors="none", edgecolors=class_colour(k), marker=class_marker(k))
    ax.scatter(z[-1:, 0], z[-1:, 1], s=12, color=class_colour(k), marker=class_marker(k),
               edgecolors="k", linewidths=0.3)


@torch.no_grad()
def state_space(model, X: torch.Tensor, y: torch.Tensor, *, n_points: int = 60, n_depths: int = 50) -> Figure:
    """z(s) ``(T, B, 2)`` of a class-stratified sample over the field at mid-depth f(S/2, z)
    (open markers: z(0), filled: z(S))."""
    model.eval()
    idx = stratified(y, n_points)
    S = horizon_of(model)
    traj = model.trajectory(X[idx], torch.linspace(0, S, n_depths)).cpu()
    lo, hi = _box(traj)
    fig, ax = plt.subplots(figsize=(5, 4.6))
    _quiver(ax, model, S / 2, lo, hi, None, X)
    labels = y[idx].cpu().long().tolist()
    for b, k in enumerate(labels):
        _path(ax, traj[:, b], k)
    model.train()
    class_legend(ax, labels, loc="upper right")
    ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="z1", ylabel="z2",
           title=f"state space: z(s), s ∈ [0, {S:g}], over f(S/2, z)\nopen marker z(0), filled z(S)")
    return fig


@torch.no_grad()
def state_space_per_input(model, X: torch.Tensor, y: torch.Tensor, *, per_class: int = 3,
                          n_depths: int = 50, learned_horizon: bool = False) -> Figure:
    """One panel per input (``per_class`` of each class): that input's own field f(s, z, u(x))
    at mid-depth and its trajectory z(s); with a learned horizon, over s ∈ [0, S(x)]."""
    model.eval()
    n_classes = len(y.unique())
    idx = stratified(y, per_class * n_classes, seed=1)
    idx = idx[y[idx].argsort(stable=True)]
    tau = torch.linspace(0, 1, n_depths) if learned_horizon else torch.linspace(0, horizon_of(model), n_depths)
    x = X[idx]
    traj = model.trajectory(x, tau.to(x))  # (T, B, 2)
    z0 = model.input_layer(x)
    u = model.control(x, z0) if model.control is not None else None
    S_x = model.horizon(x) if learned_horizon else torch.full((len(idx),), horizon_of(model)).to(x)
    lo, hi = _box(traj.cpu())
    cols = min(len(idx), per_class)
    rows = -(-len(idx) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.9 * rows), squeeze=False)
    for b, ax in enumerate(axes.flat):
        if b >= len(idx):
            ax.axis("off")
            continue
        k = int(y[idx[b]])
        _quiver(ax, model, float(S_x[b]) / 2, lo, hi, None if u is None else u[b : b + 1], x, grid=11)
        _path(ax, traj[:, b], k, lw=1.4, alpha=1.0)
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="z1", ylabel="z2",
               title=f"x = ({_coords(x[b])}), class {k}, S = {float(S_x[b]):.2f}")
        ax.title.set_fontsize(8)
    model.train()
    fig.suptitle("state space per input: z(s) over its own field f(S/2, z, u(x)); open marker z(0), filled z(S)",
                 fontsize=10)
    fig.tight_layout()
    return fig
