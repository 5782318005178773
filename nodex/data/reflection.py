"""The 1-D reflection map φ(x) = −x (paper E2): the regression target no 1-D flow can fit."""

from __future__ import annotations

import torch

from nodex.data.toy import GENERATORS


@GENERATORS.register("reflection")
def reflection(
    n: int, gen: torch.Generator, *, low: float = -1.0, high: float = 1.0, grid: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``X`` ``(n, 1)`` on ``[low, high]`` and ``y = −X`` ``(n, 1)``. ``grid`` (the paper's
    ``linspace(−1, 1, 100)``) gives evenly spaced points, so splits of different sizes use
    different grids; otherwise points are uniform at random."""
    if grid:
        X = torch.linspace(low, high, n)[:, None]
    else:
        X = low + (high - low) * torch.rand(n, 1, generator=gen)
    return X, -X
