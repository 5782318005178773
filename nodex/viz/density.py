"""Figures of a continuous normalizing flow: per condition the data, the learned density and
samples of that condition's prior; and the samples of every prior together."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from nodex.viz.style import class_colour, new_figure, outside_legend  # noqa: E402


def _condition_data(model: nn.Module, X: torch.Tensor, y: torch.Tensor, condition: int) -> torch.Tensor:
    """The test points ``(n, d)`` of one condition (all of them for an unconditional flow)."""
    return (X[y == condition, : model.dim] if model.n_conditions else X[:, : model.dim]).cpu()


def _limits(*clouds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    both = torch.cat([c[:, :2] for c in clouds])
    return torch.quantile(both, 0.005, dim=0) - 0.5, torch.quantile(both, 0.995, dim=0) + 0.5


@torch.no_grad()
def cnf_figure(model: nn.Module, X: torch.Tensor, y: torch.Tensor, condition: int, *, n_samples: int = 2000,
               grid: int = 80) -> Figure:
    """For condition ``condition``: its data, the learned density ``p(x)`` on a grid (2-D) and
    ``n_samples`` samples drawn by integrating its prior back to ``s = 0``."""
    model.eval()
    data = _condition_data(model, X, y, condition)
    samples = model.sample(n_samples, condition, generator=torch.Generator().manual_seed(0)).cpu()
    lo, hi = _limits(data, samples)
    extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    panels = 3 if model.dim == 2 else 2
    fig, axes = new_figure(1, panels, figsize=(3.9 * panels, 3.5))
    axes[0].scatter(data[:2000, 0].numpy(), data[:2000, 1].numpy(), s=2, alpha=0.5, color=class_colour(condition))
    axes[0].set(title=f"test data, condition {condition}")
    if model.dim == 2:
        gx, gy = torch.meshgrid(torch.linspace(extent[0], extent[1], grid), torch.linspace(extent[2], extent[3], grid),
                                indexing="xy")
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(X)
        density = model.log_prob(model.with_condition(pts, condition)).exp().reshape(grid, grid).cpu()
        im = axes[1].imshow(density.numpy(), origin="lower", extent=extent, cmap="magma", aspect="auto")
        fig.colorbar(im, ax=axes[1], label="p(x | condition)")
        axes[1].set(title="learned density")
    axes[-1].scatter(samples[:, 0].numpy(), samples[:, 1].numpy(), s=2, alpha=0.5, color=class_colour(condition))
    axes[-1].set(title=f"samples of prior {condition} (s = S → 0)")
    for ax in axes:
        ax.set(xlim=extent[:2], ylim=extent[2:], xlabel="x1", ylabel="x2")
    model.train()
    return fig


@torch.no_grad()
def cnf_samples(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, n_samples: int = 1000) -> Figure:
    """Left: the test data, right: ``n_samples`` samples of each prior, one colour per condition."""
    model.eval()
    conditions = range(max(1, model.n_conditions))
    gen = torch.Generator().manual_seed(0)
    data = {k: _condition_data(model, X, y, k) for k in conditions}
    samples = {k: model.sample(n_samples, k, generator=gen).cpu() for k in conditions}
    model.train()
    lo, hi = _limits(*data.values(), *samples.values())
    fig, axes = new_figure(1, 2, figsize=(9.6, 3.8))
    for ax, clouds, title in ((axes[0], data, "test data"), (axes[1], samples, "samples per prior")):
        for k, pts in clouds.items():
            ax.scatter(pts[:n_samples, 0].numpy(), pts[:n_samples, 1].numpy(), s=2, alpha=0.5,
                       color=class_colour(k), label=f"condition {k}")
        ax.set(xlim=(float(lo[0]), float(hi[0])), ylim=(float(lo[1]), float(hi[1])), xlabel="x1", ylabel="x2",
               title=title)
    outside_legend(fig, where="right upper", markerscale=4)
    return fig
