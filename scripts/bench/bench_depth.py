"""Cost of depth-variant fields, side by side (issue: Galërkin and stacked Neural ODEs).

    python scripts/bench/bench_depth.py [--threads 1] [--rounds 30]

1. Per-evaluation time of one field call (forward, and forward+backward) for a plain MLP field,
   Galërkin fields (Fourier m=5 in layers 0,1 or in all layers) and stacked fields (p = 10 and
   100) of the same width; interleaved round-robin, best of ``--rounds``; ratio to plain.
2. Stacked model, p = 10: one solve with the breakpoints as ``jump_t`` vs p chained solves
   (each piece frozen) vs one blind solve: forward/backward NFE, error against a tight
   solve, time per forward+backward (autograd and adjoint, dopri5 at tol 1e-4 and 1e-6).
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (the import path)
import torch
from torch import nn

from nodex import MLPField, NFECounter, SolverSettings, odesolve
from nodex.models.neural_ode import BoundDynamics


def field_costs(rounds: int) -> None:
    print("| batch | width | field | fwd us | x plain | fwd+bwd us | x plain |\n|---|---|---|---|---|---|---|")
    for B, width in ((1024, 32), (256, 64), (1024, 128)):
        torch.manual_seed(0)
        make = lambda depth, layers=None, **opts: MLPField(  # noqa: E731
            2, 2, hidden=[width, width], depth=depth, depth_layers=layers, depth_options=opts, zero_init_last=False
        )
        fields = {
            "plain": make("none"),
            "galerkin m=5 (layers 0,1)": make("galerkin", [0, 1], m=5, init="normal"),
            "galerkin m=5 (all)": make("galerkin", None, m=5, init="normal"),
            "stacked p=10 (all)": make("stacked", None, pieces=10),
            "stacked p=100 (all)": make("stacked", None, pieces=100),
        }
        s, z = torch.tensor(0.37), torch.randn(B, 2)
        best = {k: [float("inf"), float("inf")] for k in fields}
        for _ in range(rounds):
            for name, f in fields.items():
                with torch.no_grad():
                    t = time.perf_counter()
                    for _ in range(50):
                        f(s, z)
                    best[name][0] = min(best[name][0], (time.perf_counter() - t) / 50)
                zz = z.clone().requires_grad_()
                t = time.perf_counter()
                for _ in range(20):
                    f(s, zz).sum().backward()
                best[name][1] = min(best[name][1], (time.perf_counter() - t) / 20)
        p = best["plain"]
        for name, (fw, fb) in best.items():
            print(f"| {B} | {width} | {name} | {fw * 1e6:.0f} | {fw / p[0]:.2f} | {fb * 1e6:.0f} | {fb / p[1]:.2f} |")


class _Frozen(nn.Module):
    """Piece i's field whatever s (one of p chained Neural ODEs)."""

    def __init__(self, field: nn.Module, depth: float) -> None:
        super().__init__()
        self.field, self.depth = field, torch.tensor(depth)

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.field(self.depth, z)


def jump_vs_chained() -> None:
    p = 10
    torch.manual_seed(0)
    field = MLPField(2, 2, hidden=[16], depth="stacked", depth_options={"pieces": p}, zero_init_last=False)
    with torch.no_grad():
        for layer in field.layers:
            layer.coeffs.mul_(2.0)
    dyn = BoundDynamics(field, None)
    x = torch.randn(512, 2)
    edges = [i / p for i in range(p + 1)]
    jumps = torch.tensor(edges[1:-1], dtype=torch.float64)
    span = torch.tensor([0.0, 1.0])

    def solve(kind: str, settings: SolverSettings, counter: NFECounter | None) -> torch.Tensor:
        if kind == "chained":
            z = x
            for a, b in zip(edges[:-1], edges[1:]):
                z = odesolve(_Frozen(field, (a + b) / 2), z, torch.tensor([a, b]), settings, counter=counter)[-1]
            return z
        return odesolve(dyn, x, span, settings, counter=counter, jump_t=jumps if kind == "jump_t" else None)[-1]

    ref = solve("jump_t", SolverSettings(rtol=1e-9, atol=1e-9), None).detach()
    print("\n| tol | sensitivity | stacked p=10 via | NFE fwd | NFE bwd | max error | ms fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for tol in (1e-4, 1e-6):
        for sens in ("autograd", "adjoint"):
            settings = SolverSettings(rtol=tol, atol=tol, sensitivity=sens)
            for kind in ("jump_t", "chained", "blind"):
                best = float("inf")
                for _ in range(3):
                    counter = NFECounter()
                    field.zero_grad()
                    t = time.perf_counter()
                    z = solve(kind, settings, counter)
                    nfe_f = counter.count
                    z.pow(2).sum().backward()
                    best = min(best, time.perf_counter() - t)
                err = (z.detach() - ref).abs().max().item()
                print(f"| {tol:g} | {sens} | {kind} | {nfe_f} | {counter.count - nfe_f} | {err:.1e} "
                      f"| {best * 1e3:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    field_costs(args.rounds)
    jump_vs_chained()


if __name__ == "__main__":
    main()
