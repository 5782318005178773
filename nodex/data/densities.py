"""2-D density datasets for continuous normalizing flows (``task=density``).

Every generator follows the :data:`~nodex.data.toy.GENERATORS` signature
``gen(n, torch.Generator, **params) -> (X, y)``. Unconditional densities return ``X`` float
``(n, 2)`` and ``y = 0`` (long ``(n,)``). :func:`conditional_targets` stacks several targets
for the data-controlled CNF: ``X = [x, k]`` ``(n, 3)`` with the condition index ``k`` as the
last column (what the CNF's ``conditions`` option reads) and ``y = k``.
"""

from __future__ import annotations

import math

import torch

from nodex.data.toy import GENERATORS
from nodex.errors import ConfigError


def _zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long)


@GENERATORS.register("gaussians")
def gaussians(
    n: int, gen: torch.Generator, *, modes: int = 6, radius: float = 4.0, std: float = 0.5, standardize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A mixture of ``modes`` equal Gaussians (std ``std``) centred on a circle of radius
    ``radius`` (torchdyn's CNF tutorial: 6 modes, radius 4, std 0.5). ``standardize`` divides by
    the mixture's exact per-coordinate std ``sqrt(radius²/2 + std²)`` (``modes >= 3``), the
    analytic version of the tutorial's z-normalisation."""
    k = torch.randint(0, modes, (n,), generator=gen)
    angle = 2 * math.pi * k.float() / modes
    X = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1) + std * torch.randn(n, 2, generator=gen)
    if standardize:
        X = X / math.sqrt(radius**2 / 2 + std**2)
    return X, _zeros(n)


@GENERATORS.register("moons_density")
def moons_density(
    n: int, gen: torch.Generator, *, noise: float = 0.05, scale: float = 1.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half-moons as a density, centred at the origin and scaled by ``scale``."""
    half = n // 2
    t = math.pi * torch.rand(n, generator=gen)
    a = torch.stack([torch.cos(t[:half]), torch.sin(t[:half])], 1)
    b = torch.stack([1 - torch.cos(t[half:]), 0.5 - torch.sin(t[half:])], 1)
    X = torch.cat([a, b]) + noise * torch.randn(n, 2, generator=gen)
    X = scale * (X - torch.tensor([0.5, 0.25]))
    return X[torch.randperm(n, generator=gen)], _zeros(n)


@GENERATORS.register("spirals_density")
def spirals_density(
    n: int, gen: torch.Generator, *, noise: float = 0.1, scale: float = 1.0 / 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """FFJORD's two spirals: angle ``sqrt(U)·540°``, arm ``(−cos t·t, sin t·t)`` (+ uniform
    jitter 0.5), the second arm its point reflection; times ``scale``, plus ``N(0, noise²)``."""
    t = torch.sqrt(torch.rand(n, generator=gen)) * 540 * (2 * math.pi) / 360
    arm = torch.stack([-torch.cos(t) * t, torch.sin(t) * t], 1) + 0.5 * torch.rand(n, 2, generator=gen)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)[:, None]
    X = sign * arm * scale + noise * torch.randn(n, 2, generator=gen)
    return X, _zeros(n)


@GENERATORS.register("checkerboard")
def checkerboard(n: int, gen: torch.Generator, *, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """FFJORD's checkerboard: uniform on the black squares of a 4×4 board on ``[−2, 2]²``
    (times ``scale``)."""
    x1 = 4 * torch.rand(n, generator=gen) - 2
    x2 = torch.rand(n, generator=gen) - 2 * torch.randint(0, 2, (n,), generator=gen).float()
    x2 = x2 + torch.floor(x1) % 2
    return scale * torch.stack([x1, x2], 1), _zeros(n)


UNCONDITIONAL = ("gaussians", "moons_density", "spirals_density", "checkerboard")


@GENERATORS.register("conditional_targets")
def conditional_targets(
    n: int,
    gen: torch.Generator,
    *,
    targets: list[str] = ("gaussians", "moons_density"),
    target_params: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Several 2-D targets in one dataset for the data-controlled CNF: condition ``k`` (equal
    shares) draws from ``targets[k]`` with ``target_params[targets[k]]`` (optional keyword dicts).
    Returns ``X = [x1, x2, k]`` ``(n, 3)`` and ``y = k`` ``(n,)``."""
    targets = list(targets)
    for name in targets:
        if name not in UNCONDITIONAL:
            raise ConfigError(f"data.params.targets has {name!r}; choose targets among: {', '.join(UNCONDITIONAL)}")
    target_params = dict(target_params or {})
    k = torch.arange(n) % len(targets)
    X = torch.empty(n, 2)
    for i, name in enumerate(targets):
        idx = (k == i).nonzero()[:, 0]
        X[idx] = GENERATORS.get(name)(idx.numel(), gen, **dict(target_params.get(name) or {}))[0]
    order = torch.randperm(n, generator=gen)
    X, k = X[order], k[order]
    return torch.cat([X, k[:, None].float()], 1), k
