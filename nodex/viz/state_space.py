"""2-D state-space figures (the paper's Figures 3 and 5): trajectories z(s) in the plane over
the learned vector field, the field always drawn at a depth the figure names. A field that is the
same at every depth is one panel; a depth-varying field (Galërkin, stacked, depth-concatenated) is
a row of depth windows, each with its stretch of the trajectories over the field at the window's
middle. A data-controlled field f(s, z, u(x)) or a learned horizon S(x) is drawn per input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from nodex.viz.protocol import horizon_of, stratified  # noqa: E402
from nodex.viz.style import arrows, class_colour, class_handles, class_marker, new_figure, outside_legend  # noqa: E402


def _box(traj: torch.Tensor, pad: float = 0.3, limits: tuple[float, ...] | None = None) -> tuple[list[float], list[float]]:
    """``(lo, hi)`` of the state plane drawn: ``limits`` ``(z1 from, z1 to, z2 from, z2 to)``, else the box of the
    trajectories ``(T, B, 2)`` with ``pad``."""
    if limits:
        return [float(limits[0]), float(limits[2])], [float(limits[1]), float(limits[3])]
    flat = traj.reshape(-1, 2)
    return (flat.min(0).values - pad).tolist(), (flat.max(0).values + pad).tolist()


def _lattice(lo, hi, grid: int, like: torch.Tensor) -> torch.Tensor:
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], grid), torch.linspace(lo[1], hi[1], grid), indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(like)


def _field(model, depth: float, pts: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """f(depth, pts, u) ``(N, 2)``; ``u``: ``(1, ...)`` (one input's control, repeated) or ``None``."""
    u_all = None if u is None else u.expand(pts.shape[0], *u.shape[1:])
    return model.field(torch.tensor(depth).to(pts), pts, u_all)


@torch.no_grad()
def field_varies_with_depth(model, S: float, lo, hi, like: torch.Tensor, u: torch.Tensor | None = None) -> bool:
    """Whether f(s, z[, u]) differs between depths of ``[0, S]`` on a lattice of the box ``[lo, hi]`` (a
    Galërkin, stacked or depth-concatenated field does; a plain MLP field does not)."""
    pts = _lattice(lo, hi, 7, like)
    first = _field(model, 0.0, pts, u)
    scale = float(first.abs().max()) + 1e-12
    return any(not torch.allclose(_field(model, S * k / 8, pts, u), first, rtol=1e-5, atol=1e-6 * scale)
               for k in range(1, 9))


def _quiver(ax: Axes, model, depth: float, lo, hi, u: torch.Tensor | None, like: torch.Tensor, grid: int = 15) -> None:
    """The field f(depth, z, u) on a ``grid × grid`` lattice of the box ``[lo, hi]``."""
    pts = _lattice(lo, hi, grid, like)
    v = _field(model, depth, pts, u).cpu()
    arrows(ax, pts.cpu().numpy(), v.numpy(), color="0.55", alpha=0.8, width=0.003)


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


def _marker_handles(start: str, end: str) -> list[Line2D]:
    return [Line2D([], [], ls="none", marker="o", mfc="none", mec="0.3", label=start),
            Line2D([], [], ls="none", marker="o", mfc="0.3", mec="k", label=end)]


@torch.no_grad()
def state_space(model, X: torch.Tensor, y: torch.Tensor, *, n_points: int = 60, n_depths: int = 50,
                windows: int | None = None, limits: tuple[float, ...] | None = None) -> Figure:
    """z(s) ``(T, B, 2)`` of a class-stratified sample over the field, split into ``windows`` depth windows (one
    panel each: the trajectories over the window, open marker at its start, filled at its end, over the field at
    the window's middle; each title names that depth). ``windows=None``: one panel when the field is the same at
    every depth (titled so), else 4. ``limits``: the plane's range (default: the trajectories' box)."""
    model.eval()
    idx = stratified(y, n_points)
    S = horizon_of(model)
    full = model.trajectory(X[idx], torch.linspace(0, S, n_depths)).cpu()
    lo, hi = _box(full, limits=limits)
    varies = field_varies_with_depth(model, S, lo, hi, X)
    windows = (4 if varies else 1) if windows is None else int(windows)
    per = max(2, -(-(n_depths - 1) // windows))  # steps per window
    s = torch.linspace(0, S, windows * per + 1)
    traj = model.trajectory(X[idx], s).cpu() if windows > 1 else full
    labels = y[idx].cpu().long().tolist()
    fig, axes = new_figure(1, windows, figsize=(4.2 * windows + 1.6, 4.3), squeeze=False)
    for w, ax in enumerate(axes[0]):
        part = traj[w * per: (w + 1) * per + 1] if windows > 1 else traj
        a, b = (float(s[w * per]), float(s[(w + 1) * per])) if windows > 1 else (0.0, S)
        _quiver(ax, model, (a + b) / 2, lo, hi, None, X)
        for j, k in enumerate(labels):
            _path(ax, part[:, j], k)
        field = f"f({(a + b) / 2:.3g}, z)" if varies else "f(z), the same at every depth"
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="z1", ylabel="z2" if w == 0 else None,
               title=f"z(s), s ∈ [{a:.3g}, {b:.3g}]\nover the field {field}")
        ax.title.set_fontsize(10)
    model.train()
    start, end = ("z(0)", f"z(S = {S:g})") if windows == 1 else ("z at the window's start", "z at its end")
    outside_legend(fig, [*class_handles(labels), *_marker_handles(start, end)], where="right upper")
    return fig


@torch.no_grad()
def state_space_per_input(model, X: torch.Tensor, y: torch.Tensor, *, per_class: int = 3,
                          n_depths: int = 50, learned_horizon: bool = False,
                          limits: tuple[float, ...] | None = None) -> Figure:
    """One panel per input (``per_class`` of each class): that input's own field f(s, z, u(x)) at
    half its depth (the title names the depth) and its trajectory z(s); with a learned horizon, over
    s ∈ [0, S(x)]."""
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
    lo, hi = _box(traj.cpu(), limits=limits)
    varies = field_varies_with_depth(model, float(S_x.max()), lo, hi, x, None if u is None else u[:1])
    cols = min(len(idx), per_class)
    rows = -(-len(idx) // cols)
    fig, axes = new_figure(rows, cols, figsize=(3.1 * cols + 1.4, 3.1 * rows), squeeze=False)
    for b, ax in enumerate(axes.flat):
        if b >= len(idx):
            ax.axis("off")
            continue
        k = int(y[idx[b]])
        _quiver(ax, model, float(S_x[b]) / 2, lo, hi, None if u is None else u[b: b + 1], x, grid=11)
        _path(ax, traj[:, b], k, lw=1.4, alpha=1.0)
        field = f"field at s = {float(S_x[b]) / 2:.3g}" if varies else "field: same at every depth"
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel="z1", ylabel="z2",
               title=f"x = ({_coords(x[b])}), class {k}\nS = {float(S_x[b]):.2f}; {field}")
        ax.title.set_fontsize(8)
    model.train()
    fig.suptitle("state space per input: z(s) over the input's own field f(s, z, u(x))", fontsize=10)
    outside_legend(fig, [*class_handles(y[idx].tolist()), *_marker_handles("z(0)", "z(S)")], where="right upper")
    return fig
