"""Gradient accuracy at equal tolerance: nodex (backprop, adjoint), torchdiffeq's adjoint and torchdyn.

    OMP_NUM_THREADS=1 python scripts/bench/adjoint_accuracy.py

A 2-32-32-2 tanh field (float64, weights scaled ×2 so the flow is not trivial), 256 points,
loss mean |z(1)|²; the reference gradient is nodex's backprop at rtol = atol = 1e-11. Prints the
relative gradient error and the forward/backward NFE of each at tolerances 1e-4 and 1e-5.
torchdyn rows need ``bash scripts/install_bench_deps.sh``.
"""

from __future__ import annotations

import common  # noqa: F401  (the import path and .bench-site)
import torch
from torch import nn

from nodex import NFECounter, SolverSettings, odesolve


class Field(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, s, z):
        return self.net(z)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dtype = torch.float64
    net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2)).to(dtype)
    for p in net.parameters():
        p.data.mul_(2.0)
    z0 = (torch.randn(256, 2) * 2).to(dtype)
    span = torch.tensor([0.0, 1.0], dtype=dtype)

    def grad() -> torch.Tensor:
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    def nodex(tol: float, sensitivity: str, engine: str = "auto"):
        net.zero_grad()
        counter = NFECounter()
        settings = SolverSettings(rtol=tol, atol=tol, sensitivity=sensitivity, engine=engine)
        z = odesolve(Field(net), z0, span, settings, counter=counter)
        forward = counter.count
        z[-1].pow(2).mean().backward()
        return grad(), (forward, counter.count - forward)

    exact, _ = nodex(1e-11, "autograd")
    print("| implementation | tol | relative gradient error | NFE fwd/bwd |")
    print("|---|---|---|---|")

    def row(name: str, tol: float, g: torch.Tensor, nfe) -> None:
        print(f"| {name} | {tol:g} | {float((g - exact).norm() / exact.norm()):.2e} | {nfe[0]}/{nfe[1]} |")

    for tol in (1e-4, 1e-5):
        for sensitivity in ("autograd", "adjoint"):
            row(f"nodex {sensitivity}", tol, *nodex(tol, sensitivity))
        row("torchdiffeq adjoint", tol, *nodex(tol, "adjoint", "torchdiffeq"))
        try:
            from torchdyn.core import NeuralODE
        except ImportError:
            continue
        for sensitivity in ("autograd", "adjoint"):
            node = NeuralODE(net, solver="dopri5", sensitivity=sensitivity, atol=tol, rtol=tol, atol_adjoint=tol,
                             rtol_adjoint=tol, seminorm=True).to(dtype)
            net.zero_grad()
            node.vf.nfe = 0
            _, sol = node(z0, span)
            forward = int(node.vf.nfe)
            sol[-1].pow(2).mean().backward()
            row(f"torchdyn {sensitivity}", tol, grad(), (forward, int(node.vf.nfe) - forward))


if __name__ == "__main__":
    main()
