"""Initial conditions for the tracking task (paper E4, torchdyn's generalized-adjoint tutorial).

``circle_tracking``: ``x = center + sigma·N(0, I)`` (default center ``[1, 0]``, the start of
the reference circle). There are no labels: ``y`` is a copy of ``x`` (real-valued, so the
bundle reports ``target_dim = 2``); the tracking task scores the trajectory against γ(s).
"""

from __future__ import annotations

import torch

from nodex.data.toy import GENERATORS


@GENERATORS.register("circle_tracking")
def circle_tracking(
    n: int, gen: torch.Generator, *, center: tuple[float, ...] = (1.0, 0.0), sigma: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` initial conditions ``(n, len(center))`` around ``center`` with std ``sigma``."""
    c = torch.tensor([float(v) for v in center])
    X = c + float(sigma) * torch.randn(n, c.numel(), generator=gen)
    return X, X.clone()
