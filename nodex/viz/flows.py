"""Plots for data-controlled, adaptive-depth and normalizing-flow models (matplotlib, Agg).

- :func:`regression_trajectories`: 1-D regression, state over depth coloured by the error
  (per-sample depth ``τ·S(x)`` for an adaptive horizon);
- :func:`horizon_figure`: the learned S(x) against x (1-D) or over the input plane (2-D),
  with its histogram;
- :func:`vector_field_snapshots`: 2-D states at a few depths with the field: a quiver on a
  grid for a plain field, each sample's own velocity for a data-controlled one;
- :func:`cnf_figure`: per condition, the data, the learned density and samples of a CNF.

:func:`flow_diagnostics` picks the plots that fit and sends them to the run logger; it is
called from :func:`nodex.viz.diagnostics`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402


def _is_cnf(model: nn.Module) -> bool:
    return hasattr(model, "priors") and hasattr(model, "sample")


@torch.no_grad()
def regression_trajectories(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, n_points: int = 60, n_depths: int = 40) -> Figure:
    """1-D states ``z(s)`` over depth for ``n_points`` inputs (``X`` ``(N, 1)``), coloured by
    the absolute error of the prediction; the targets are marked at the end of each path."""
    model.eval()
    idx = torch.linspace(0, X.shape[0] - 1, min(n_points, X.shape[0])).long()
    x, target = X[idx], y[idx].reshape(len(idx), -1)
    tau = torch.linspace(0, 1, n_depths) if model.horizon is not None else torch.linspace(0, float(model.settings.S), n_depths)
    traj = model.trajectory(x, tau.to(x)).cpu()[..., 0]  # (T, B)
    err = (model(x).y_hat - target).abs().reshape(len(idx), -1).mean(1).cpu()
    S_x = model.horizon(x).cpu() if model.horizon is not None else None
    model.train()
    fig, ax = plt.subplots(figsize=(6, 4))
    norm = plt.Normalize(0.0, max(float(err.max()), 1e-6))
    for b in range(traj.shape[1]):
        depth = tau * (S_x[b] if S_x is not None else 1.0)
        ax.plot(depth.numpy(), traj[:, b].numpy(), color=plt.cm.viridis(norm(float(err[b]))), lw=0.9)
        ax.scatter([float(depth[-1])], [float(target[b, 0])], color="k", s=4, zorder=3)
    sm = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
    fig.colorbar(sm, ax=ax, label="|error|")
    ax.set(xlabel="depth s" + (" (τ·S(x))" if S_x is not None else ""), ylabel="z(s)", title="depth trajectories (dots: targets)")
    fig.tight_layout()
    return fig


@torch.no_grad()
def horizon_figure(model: nn.Module, X: torch.Tensor) -> Figure:
    """The learned S(x): against x for 1-D inputs, over the plane for 2-D; and its histogram."""
    S_x = model.horizon(X).cpu()
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(9, 3.5))
    flat = X.reshape(X.shape[0], -1).cpu()
    if flat.shape[1] == 1:
        order = flat[:, 0].argsort()
        ax.plot(flat[order, 0].numpy(), S_x[order].numpy())
        ax.set(xlabel="x", ylabel="S(x)", title="learned horizon S(x)")
    elif flat.shape[1] == 2:
        sc = ax.scatter(flat[:, 0].numpy(), flat[:, 1].numpy(), c=S_x.numpy(), s=4, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="S(x)")
        ax.set(xlabel="x1", ylabel="x2", title="learned horizon S(x)")
    else:
        ax.plot(S_x.sort().values.numpy())
        ax.set(xlabel="sample (sorted)", ylabel="S(x)", title="learned horizon S(x)")
    hist.hist(S_x.numpy(), bins=40)
    hist.set(xlabel="S(x)", ylabel="count", title=f"S(x): mean {float(S_x.mean()):.3g}")
    fig.tight_layout()
    return fig


@torch.no_grad()
def vector_field_snapshots(
    model: nn.Module, X: torch.Tensor, color: torch.Tensor, *, depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0), n_points: int = 200, grid: int = 12
) -> Figure:
    """2-D states ``z(s)`` of ``n_points`` inputs at fractions ``depths`` of ``S``, with the
    field: a grid quiver of ``f(s, ·)`` for an uncontrolled field, else each sample's own
    velocity ``f(s, z(s), u(x))`` (a data-controlled model has one field per input)."""
    model.eval()
    idx = torch.linspace(0, X.shape[0] - 1, min(n_points, X.shape[0])).long()  # spread over the (ordered) split
    x = X[idx]
    S = float(model.settings.S)
    s = torch.tensor([d * S for d in depths]).to(x)
    traj = model.trajectory(x, s)  # (T, B, 2)
    z0 = model.input_layer(x)
    u = model.control(x, z0) if model.control is not None else None
    lo = traj.reshape(-1, 2).min(0).values - 0.3
    hi = traj.reshape(-1, 2).max(0).values + 0.3
    fig, axes = plt.subplots(1, len(depths), figsize=(3.2 * len(depths), 3.2), squeeze=False)
    c = color[idx].cpu().numpy()
    for i, ax in enumerate(axes[0]):
        depth = s[i]
        z = traj[i]
        if u is None:
            gx, gy = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), grid), torch.linspace(float(lo[1]), float(hi[1]), grid), indexing="xy")
            pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(x)
            v = model.field(depth, pts, None).cpu()
            ax.quiver(pts[:, 0].cpu().numpy(), pts[:, 1].cpu().numpy(), v[:, 0].numpy(), v[:, 1].numpy(), color="0.5", alpha=0.7)
        else:
            v = model.field(depth, z, u).cpu()
            ax.quiver(z[:, 0].cpu().numpy(), z[:, 1].cpu().numpy(), v[:, 0].numpy(), v[:, 1].numpy(), c, cmap="coolwarm", alpha=0.6)
        ax.scatter(z[:, 0].cpu().numpy(), z[:, 1].cpu().numpy(), c=c, cmap="coolwarm", s=4, edgecolors="none")
        ax.set(xlim=(float(lo[0]), float(hi[0])), ylim=(float(lo[1]), float(hi[1])), title=f"s = {float(depth):.2f}")
    model.train()
    fig.tight_layout()
    return fig


@torch.no_grad()
def cnf_figure(model: nn.Module, X: torch.Tensor, y: torch.Tensor, condition: int, *, n_samples: int = 2000, grid: int = 80) -> Figure:
    """For condition ``condition``: its data, the learned density ``p(x)`` on a grid (2-D) and
    ``n_samples`` samples drawn by integrating the prior back to ``s = 0``."""
    model.eval()
    data = X[y == condition, : model.dim].cpu() if model.n_conditions else X[:, : model.dim].cpu()
    samples = model.sample(n_samples, condition, generator=torch.Generator().manual_seed(0)).cpu()
    both = torch.cat([data[:, :2], samples[:, :2]])
    lo = torch.quantile(both, 0.005, dim=0) - 0.5
    hi = torch.quantile(both, 0.995, dim=0) + 0.5
    panels = 3 if model.dim == 2 else 2
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.4))
    axes[0].scatter(data[:2000, 0].numpy(), data[:2000, 1].numpy(), s=2, alpha=0.5)
    axes[0].set(title=f"data (condition {condition})")
    if model.dim == 2:
        gx, gy = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), grid), torch.linspace(float(lo[1]), float(hi[1]), grid), indexing="xy")
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(X)
        density = model.log_prob(model.with_condition(pts, condition)).exp().reshape(grid, grid).cpu()
        axes[1].imshow(density.numpy(), origin="lower", extent=(float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])), cmap="magma", aspect="auto")
        axes[1].set(title="learned density")
    axes[-1].scatter(samples[:, 0].numpy(), samples[:, 1].numpy(), s=2, alpha=0.5, color="tab:orange")
    axes[-1].set(title="samples (prior → s = 0)")
    for ax in axes:
        ax.set(xlim=(float(lo[0]), float(hi[0])), ylim=(float(lo[1]), float(hi[1])))
    model.train()
    fig.tight_layout()
    return fig


def flow_diagnostics(model: nn.Module, data, task, logger, step: int) -> None:
    """CNF density/sample plots per condition; 1-D regression trajectories coloured by error;
    the learned horizon (plot, histogram); vector-field snapshots for 2-D states."""
    X, y = data.test
    if _is_cnf(model):
        for k in range(max(1, model.n_conditions)):
            logger.figure(f"plots/cnf_condition_{k}", cnf_figure(model, X, y, k), step)
        return
    if not hasattr(model, "trajectory") or not hasattr(model, "horizon"):
        return
    if model.horizon is not None:
        with torch.no_grad():
            logger.histogram("horizon/S", model.horizon(X).cpu(), step)
        logger.figure("plots/horizon", horizon_figure(model, X), step)
    if X.dim() == 2 and X.shape[1] == 1 and data.target_dim == 1:
        logger.figure("plots/regression_trajectories", regression_trajectories(model, X, y), step)
    with torch.no_grad():
        state = model.input_layer(X[:1]).shape[1:]
    if tuple(state) == (2,) and model.horizon is None and getattr(task, "n_classes", None):
        logger.figure("plots/vector_field", vector_field_snapshots(model, X, y.float()), step)
