"""Reference problems for nodex's own ODE engine (:mod:`nodex.ode.lean`): exact values, orders,
gradients against autograd and finite differences, degenerate fields, tuple states, ``jump_t``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nodex.ode import NFECounter, SolverSettings, odesolve

F64 = torch.float64


class ExpDecay(nn.Module):
    """torchdiffeq's "exp" problem: ``f(s, z) = -0.1·exp(-0.1 s)·1``, independent of ``z`` and of
    any parameter; ``z(s) = z0 + exp(-0.1 s) - 1``."""

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -0.1 * torch.exp(-0.1 * s) * torch.ones_like(z)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "midpoint", "euler"])
@pytest.mark.parametrize("engine", ["auto", "torchdiffeq"])
def test_adjoint_of_a_field_without_state_or_parameter_dependence(method, engine):
    """Outputs at 1, 4, 8 each equal z0 + const: d(sum)/dz0 = 3 exactly, the values the closed form."""
    step = None if method == "dopri5" else 0.05
    settings = SolverSettings(method=method, step_size=step, rtol=1e-9, atol=1e-9, sensitivity="adjoint", engine=engine)
    z0 = torch.tensor([[1.0, 2.0]], dtype=F64, requires_grad=True)
    s = torch.tensor([0.0, 1.0, 4.0, 8.0], dtype=F64)
    zs = odesolve(ExpDecay(), z0, s, settings)
    exact = z0.detach() + (torch.exp(-0.1 * s) - 1).reshape(-1, 1, 1)
    tol = {"dopri5": 1e-8, "rk4": 1e-8, "midpoint": 1e-4, "euler": 5e-3}[method]
    assert torch.allclose(zs, exact, atol=tol, rtol=0)
    (grad,) = torch.autograd.grad(zs[1:].sum(), z0)
    assert torch.allclose(grad, torch.full_like(grad, 3.0), atol=1e-12, rtol=0)


class LeafHorizon(nn.Module):
    """``dz/ds = S·tanh(W z)`` with a leaf ``nn.Parameter`` horizon ``S`` registered on the module
    (as :class:`nodex.models.neural_ode.BoundDynamics` registers a leaf horizon)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.W = nn.Parameter(torch.randn(2, 2, dtype=F64))
        self.horizon = nn.Parameter(torch.tensor(1.3, dtype=F64))

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.horizon * torch.tanh(z @ self.W.T)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("engine", ["auto", "torchdiffeq"])
def test_a_leaf_horizon_passed_twice_gets_its_gradient_once(method, engine):
    """The caller passes the module's parameters and the horizon again (NeuralODE._solve does):
    the adjoint gradient of every parameter equals autograd's, not twice it."""
    z0 = torch.tensor([[0.5, -1.0], [1.5, 0.2]], dtype=F64)
    s = torch.tensor([0.0, 1.0], dtype=F64)
    grads = {}
    for sens in ("autograd", "adjoint"):
        field = LeafHorizon()
        step = None if method == "dopri5" else 0.01
        settings = SolverSettings(method=method, step_size=step, rtol=1e-11, atol=1e-11, sensitivity=sens, engine=engine)
        params = (*field.parameters(), field.horizon)
        loss = odesolve(field, z0, s, settings, adjoint_params=params)[-1].pow(2).sum()
        grads[sens] = torch.stack([g.reshape(-1)[0] for g in torch.autograd.grad(loss, [field.horizon, field.W])])
    assert torch.allclose(grads["adjoint"], grads["autograd"], rtol=1e-6, atol=0)
