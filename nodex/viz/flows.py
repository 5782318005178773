"""Figures of the flow over depth: 1-D regression trajectories coloured by the error, the
learned horizon S(x), and snapshots of 2-D states over the field at a few depths."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from nodex.viz.protocol import horizon_of, spread, stratified  # noqa: E402
from nodex.viz.style import arrows, new_figure, outside_legend, scatter_classes  # noqa: E402


@torch.no_grad()
def regression_trajectories(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, n_points: int = 60,
                            n_depths: int = 40, learned_horizon: bool = False) -> Figure:
    """1-D states ``z(s)`` over depth for ``n_points`` inputs spread over ``X`` ``(N, 1)``, coloured
    by the absolute error; targets ``y`` ``(N, 1)`` marked at the end of each path. With a learned
    horizon the depth axis is ``τ·S(x)``."""
    model.eval()
    idx = spread(X.shape[0], n_points)
    x, target = X[idx], y[idx].reshape(len(idx), -1)
    tau = torch.linspace(0, 1, n_depths) if learned_horizon else torch.linspace(0, horizon_of(model), n_depths)
    traj = model.trajectory(x, tau.to(x)).cpu()[..., 0]  # (T, B)
    err = (model(x).y_hat - target).abs().reshape(len(idx), -1).mean(1).cpu()
    S_x = model.horizon(x).cpu() if learned_horizon else None
    model.train()
    fig, ax = new_figure(figsize=(6, 4))
    norm = plt.Normalize(0.0, max(float(err.max()), 1e-6))
    for b in range(traj.shape[1]):
        depth = tau * (S_x[b] if S_x is not None else 1.0)
        ax.plot(depth.numpy(), traj[:, b].numpy(), color=plt.cm.viridis(norm(float(err[b]))), lw=0.9)
        ax.scatter([float(depth[-1])], [float(target[b, 0])], color="k", s=4, zorder=3)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="|prediction − target|")
    ax.set(xlabel="depth s" + (" (τ·S(x))" if S_x is not None else ""), ylabel="z(s)",
           title="depth trajectories (dots: targets)")
    return fig


@torch.no_grad()
def horizon_figure(model: nn.Module, X: torch.Tensor, y: torch.Tensor | None = None) -> Figure:
    """The learned S(x) ``(N,)``: against x for 1-D inputs, over the plane for 2-D (class markers
    when ``y`` holds labels), sorted otherwise; and its histogram."""
    S_x = model.horizon(X).cpu()
    fig, (ax, hist) = new_figure(1, 2, figsize=(10, 3.8))
    flat = X.reshape(X.shape[0], -1).cpu()
    if flat.shape[1] == 1:
        order = flat[:, 0].argsort()
        ax.plot(flat[order, 0].numpy(), S_x[order].numpy())
        ax.set(xlabel="x", ylabel="S(x)", title="learned horizon S(x)")
    elif flat.shape[1] == 2:
        sc = ax.scatter(flat[:, 0].numpy(), flat[:, 1].numpy(), c=S_x.numpy(), s=6, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="S(x)")
        ax.set(xlabel="x1", ylabel="x2", title="learned horizon S(x)")
    else:
        ax.plot(S_x.sort().values.numpy())
        ax.set(xlabel="sample (sorted)", ylabel="S(x)", title="learned horizon S(x)")
    hist.hist(S_x.numpy(), bins=40)
    hist.set(xlabel="S(x)", ylabel="count", title=f"S(x): mean {float(S_x.mean()):.3g}")
    return fig


@torch.no_grad()
def vector_field_snapshots(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *,
                           depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0), n_points: int = 200,
                           grid: int = 12, limits: tuple[float, ...] | None = None) -> Figure:
    """2-D states ``z(s)`` of a class-stratified sample at fractions ``depths`` of ``S``, with the
    field: a grid quiver of ``f(s, ·)`` for an uncontrolled field, else each sample's own velocity
    ``f(s, z(s), u(x))`` (a data-controlled model has one field per input). ``limits``: the plane's range
    ``(z1 from, z1 to, z2 from, z2 to)`` (default: the states' box)."""
    model.eval()
    idx = stratified(y, n_points)
    x, labels = X[idx], y[idx].cpu().numpy()
    S = horizon_of(model)
    s = torch.tensor([d * S for d in depths]).to(x)
    traj = model.trajectory(x, s)  # (T, B, 2)
    u = model.control(x, model.input_layer(x)) if model.control is not None else None
    lo, hi = traj.reshape(-1, 2).min(0).values - 0.3, traj.reshape(-1, 2).max(0).values + 0.3
    if limits:
        lo, hi = torch.tensor([limits[0], limits[2]]), torch.tensor([limits[1], limits[3]])
    fig, axes = new_figure(1, len(depths), figsize=(3.2 * len(depths) + 1.2, 3.5), squeeze=False)
    for i, ax in enumerate(axes[0]):
        z = traj[i]
        if u is None:
            gx, gy = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), grid),
                                    torch.linspace(float(lo[1]), float(hi[1]), grid), indexing="xy")
            pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(x)
            v = model.field(s[i], pts, None).cpu()
        else:
            pts, v = z, model.field(s[i], z, u).cpu()
        arrows(ax, pts.cpu().numpy(), v.numpy(), color="0.55", alpha=0.7)
        scatter_classes(ax, z.cpu().numpy(), labels, size=6, edge="none")
        ax.set(xlim=(float(lo[0]), float(hi[0])), ylim=(float(lo[1]), float(hi[1])), title=f"s = {float(s[i]):.2f}",
               xlabel="z1", ylabel="z2" if i == 0 else None)
    field = "each point's own velocity f(s, z, u(x))" if u is not None else "the field f(s, ·) on a grid"
    fig.suptitle(f"z(s) at fractions of the depth S = {S:g}, with {field} at that depth", fontsize=10)
    outside_legend(fig, where="right upper", markerscale=2.5)
    model.train()
    return fig
