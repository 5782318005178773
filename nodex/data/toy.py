"""Seeded toy-data generators (no download). Every generator takes ``n`` and a
``torch.Generator`` and returns ``(X, y)``: ``X`` float ``(n, d)``, ``y`` long ``(n,)`` for
classification or float ``(n, k)`` for regression. Generators are registered in
:data:`GENERATORS` under ``data.name``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from nodex.registry import Registry

Generator = Callable[..., tuple[torch.Tensor, torch.Tensor]]
GENERATORS: Registry[Generator] = Registry("data.name")


def _uniform_sphere(n: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, dim, generator=gen)
    return v / v.norm(dim=1, keepdim=True)


@GENERATORS.register("rings")
def rings(
    n: int, gen: torch.Generator, *, radii: tuple[float, float] = (1.0, 2.0), noise: float = 0.1, dim: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's concentric annuli (§E1): points uniform on circles of radius 1 (label 1,
    inner) and 2 (label 0, outer), plus Gaussian noise ``N(0, noise²)`` per coordinate.
    Labels follow the paper's code (inner = 1). Half the points on each circle."""
    n_inner = n // 2
    inner = _uniform_sphere(n_inner, dim, gen) * radii[0]
    outer = _uniform_sphere(n - n_inner, dim, gen) * radii[1]
    X = torch.cat([inner, outer]) + noise * torch.randn(n, dim, generator=gen)
    y = torch.cat([torch.ones(n_inner, dtype=torch.long), torch.zeros(n - n_inner, dtype=torch.long)])
    return X, y


@GENERATORS.register("spheres_surface")
def spheres_surface(
    n: int, gen: torch.Generator, *, dim: int = 3, radii: tuple[float, float] = (0.5, 1.0), noise: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nested sphere *surfaces* in ``dim`` dimensions (torchdyn's ``spheres``, the paper's
    E6): inner radius 0.5 (label 1), outer 1.0 (label 0), small Gaussian noise."""
    return rings(n, gen, radii=radii, noise=noise, dim=dim)


@GENERATORS.register("spheres_ball_shell")
def spheres_ball_shell(
    n: int, gen: torch.Generator, *, dim: int = 2, r1: float = 0.5, r2: float = 1.0, r3: float = 1.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """ANODE's (Dupont et al. 2019) definition: a *filled* ball ``|x| <= r1`` (label 1) inside
    a shell ``r2 <= |x| <= r3`` (label 0), radii sampled uniformly in volume."""
    n_in = n // 2
    u_in = torch.rand(n_in, generator=gen) ** (1.0 / dim)
    lo, hi = r2**dim, r3**dim
    u_out = (lo + (hi - lo) * torch.rand(n - n_in, generator=gen)) ** (1.0 / dim)
    X = torch.cat(
        [_uniform_sphere(n_in, dim, gen) * (r1 * u_in)[:, None], _uniform_sphere(n - n_in, dim, gen) * u_out[:, None]]
    )
    y = torch.cat([torch.ones(n_in, dtype=torch.long), torch.zeros(n - n_in, dtype=torch.long)])
    return X, y


@GENERATORS.register("moons")
def moons(n: int, gen: torch.Generator, *, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaving half-moons (as scikit-learn's ``make_moons``), Gaussian noise."""
    n_a = n // 2
    t_a = math.pi * torch.rand(n_a, generator=gen)
    t_b = math.pi * torch.rand(n - n_a, generator=gen)
    a = torch.stack([torch.cos(t_a), torch.sin(t_a)], 1)
    b = torch.stack([1 - torch.cos(t_b), 0.5 - torch.sin(t_b)], 1)
    X = torch.cat([a, b]) + noise * torch.randn(n, 2, generator=gen)
    y = torch.cat([torch.zeros(n_a, dtype=torch.long), torch.ones(n - n_a, dtype=torch.long)])
    return X, y


@GENERATORS.register("spirals")
def spirals(
    n: int, gen: torch.Generator, *, noise: float = 0.4, turns: float = 780.0 / 360.0, scale: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved spirals (torchdyn's generator, §E3): angle ``sqrt(U)·turns·2π``,
    arm 1 ``(-cos t·t, sin t·t)``, arm 2 its point reflection, plus *uniform* noise
    ``U·noise``; coordinates scaled by ``scale`` to order one."""
    n_a = n // 2
    t = torch.sqrt(torch.rand(n, generator=gen)) * turns * 2 * math.pi
    arm = torch.stack([-torch.cos(t) * t, torch.sin(t) * t], 1)
    arm[n_a:] = -arm[n_a:]
    X = (arm + noise * torch.rand(n, 2, generator=gen)) * scale
    y = torch.cat([torch.zeros(n_a, dtype=torch.long), torch.ones(n - n_a, dtype=torch.long)])
    return X, y
