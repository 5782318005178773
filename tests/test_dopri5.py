"""nodex's lean dopri5 and its adjoint: the same steps, NFE, values and gradients as
torchdiffeq's, adjoint = autograd, failures, and the dispatch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from nodex.errors import SolverError
from nodex.ode import NFECounter, SolverSettings, odesolve
from nodex.ode import solve as solve_module
from nodex.ode.lean.dopri5 import dopri5
from nodex.ode.lean.runge_kutta import initial_step as _initial_step


class DepthVaryingMLP(nn.Module):
    """f(s, z) = MLP(z) · (1 + 0.3 cos 3s): a trainable, depth-dependent field."""

    def __init__(self, dtype=torch.float64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 2)).to(dtype)

    def forward(self, s, z):
        return self.net(z) * (1 + 0.3 * torch.cos(3 * s))


def _z0(dtype=torch.float64):
    return torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=dtype) * 2


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-9])
def test_same_steps_values_and_nfe_as_torchdiffeq(tol):
    field, z0 = DepthVaryingMLP(), _z0()
    s = torch.tensor([0.0, 0.25, 0.7, 1.0], dtype=torch.float64)
    out = {}
    for engine in ("auto", "torchdiffeq"):
        counter = NFECounter()
        settings = SolverSettings(method="dopri5", rtol=tol, atol=tol, engine=engine)
        out[engine] = (odesolve(field, z0, s, settings, counter=counter), counter.count)
    (ours, n_ours), (ref, n_ref) = out["auto"], out["torchdiffeq"]
    assert n_ours == n_ref > 7
    assert ours.shape == ref.shape == (4, 256, 2)
    assert torch.equal(ours[0], z0)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)


def test_gradients_equal_torchdiffeq_at_the_same_steps():
    """torchdiffeq also differentiates through its initial-step heuristic; given that step as
    ``first_step`` (a constant), both are the gradient of the same discrete solution."""
    field, z0 = DepthVaryingMLP(), _z0()
    with torch.no_grad():
        h = _initial_step(field, 0.0, z0, field(torch.tensor(0.0, dtype=z0.dtype), z0), 1e-5, 1e-5)
    grads = []
    for solve in (
        lambda: dopri5(field, z0, [0.0, 1.0], 1e-5, 1e-5, 1000)[-1],
        lambda: odeint(
            field, z0, torch.tensor([0.0, 1.0], dtype=z0.dtype), rtol=1e-5, atol=1e-5, options={"first_step": h}
        )[-1],
    ):
        field.zero_grad()
        solve().pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_error_falls_at_fifth_order_with_the_tolerance():
    """dz/ds = cos(2πs)·z has z(S) = exp(sin(2πS)/2π); tightening tol 100x must cut the error
    by roughly 100x (error per unit step ∝ tol) and the solution must meet the tolerance."""
    z0 = torch.ones(1, 1, dtype=torch.float64)
    exact = math.exp(math.sin(2 * math.pi * 0.8) / (2 * math.pi))
    errors = []
    for tol in (1e-5, 1e-7, 1e-9):
        z = dopri5(lambda s, z: torch.cos(2 * math.pi * s) * z, z0, [0.0, 0.8], tol, tol, 10_000)[-1]
        errors.append(abs(float(z) - exact))
        assert errors[-1] < 20 * tol
    assert errors[0] > errors[1] > errors[2]


def test_float32_state_agrees_with_torchdiffeq_to_rounding():
    field, z0 = DepthVaryingMLP(torch.float32), _z0(torch.float32)
    settings = SolverSettings(method="dopri5", rtol=1e-4, atol=1e-4)
    ours = odesolve(field, z0, torch.tensor([0.0, 1.0]), settings)[-1]
    theirs = SolverSettings(method="dopri5", rtol=1e-4, atol=1e-4, engine="torchdiffeq")
    ref = odesolve(field, z0, torch.tensor([0.0, 1.0]), theirs)[-1]
    assert (ours - ref).abs().max() < 1e-4


def _spy(monkeypatch):
    calls = []
    for name in ("dopri5", "dopri5_adjoint"):
        real = getattr(solve_module, name)

        def spy(*args, _real=real, **kwargs):
            calls.append(1)
            return _real(*args, **kwargs)

        monkeypatch.setattr(solve_module, name, spy)
    return calls


@pytest.mark.parametrize(
    "settings,z0,s,jump_t,lean",
    [
        ({}, "tensor", [0.0, 1.0], None, True),
        ({}, "tensor", [0.0, 0.5, 1.0], None, True),
        ({"engine": "torchdiffeq"}, "tensor", [0.0, 1.0], None, False),
        ({"sensitivity": "adjoint"}, "tensor", [0.0, 1.0], None, True),
        ({"method": "bosh3"}, "tensor", [0.0, 1.0], None, False),
        ({"options": {"first_step": 0.1}}, "tensor", [0.0, 1.0], None, False),
        ({}, "tuple", [0.0, 1.0], None, True),
        ({}, "tensor", [1.0, 0.0], None, False),
        ({}, "tensor", [0.0, 1.0], [0.5], True),
        ({"sensitivity": "adjoint"}, "tensor", [0.0, 1.0], [0.5], True),
    ],
)
def test_dispatch_takes_the_lean_solver_only_where_it_applies(monkeypatch, settings, z0, s, jump_t, lean):
    calls = _spy(monkeypatch)
    field = DepthVaryingMLP(torch.float32)
    state = torch.ones(3, 2) if z0 == "tensor" else (torch.ones(3, 2), torch.zeros(3, 2))
    dynamics = field if z0 == "tensor" else (lambda s_, zs: (field(s_, zs[0]), field(s_, zs[1])))
    jumps = None if jump_t is None else torch.tensor(jump_t, dtype=torch.float64)
    odesolve(dynamics, state, torch.tensor(s), SolverSettings(**settings), jump_t=jumps)
    assert bool(calls) == lean


def test_unknown_engine_is_a_one_line_error():
    with pytest.raises(ValueError) as err:
        SolverSettings(engine="torchdyn")
    assert str(err.value) == "engine='torchdyn'; choose one of: auto, torchdiffeq"


def test_non_finite_initial_state_is_a_solver_error():
    z0 = torch.tensor([[float("nan"), 1.0]])
    with pytest.raises(SolverError) as err:
        odesolve(lambda s, z: -z, z0, torch.tensor([0.0, 1.0]), SolverSettings())
    assert "non-finite" in str(err.value) and "dopri5" in str(err.value) and "\n" not in str(err.value)


def test_a_field_that_blows_up_underflows_the_step_into_a_solver_error():
    """Past s = 0.5 the field is NaN: steps shrink by 5x per reject until dt underflows."""

    def field(s, z):
        return z * (1.0 if float(s) < 0.5 else float("nan"))

    with pytest.raises(SolverError) as err:
        odesolve(field, torch.ones(2, 2), torch.tensor([0.0, 1.0]), SolverSettings())
    assert "underflow in dt" in str(err.value) and "\n" not in str(err.value)


class Autonomous(nn.Module):
    """f(s, z) = MLP(z): the backward solves of both engines take identical steps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()

    def forward(self, s, z):
        return self.net(z)


def _grads(field, z0, s, settings, counter=None):
    field.zero_grad()
    z0 = z0.clone().requires_grad_(True)
    ys = odesolve(field, z0, s, settings, counter=counter)
    (ys[-1].pow(2).mean() + 0.1 * ys[1].sin().sum()).backward()  # gradients enter at two depths
    return torch.cat([z0.grad.flatten()] + [p.grad.flatten() for p in field.parameters()])


@pytest.mark.parametrize("seminorm", [True, False])
def test_adjoint_matches_autograd_at_tight_tolerance(seminorm):
    field, z0 = DepthVaryingMLP(), _z0()[:64]
    s = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    exact = _grads(field, z0, s, SolverSettings(rtol=1e-12, atol=1e-12))
    adjoint = _grads(field, z0, s, SolverSettings(rtol=1e-9, atol=1e-9, sensitivity="adjoint", seminorm=seminorm))
    assert ((adjoint - exact).norm() / exact.norm()) < 1e-6


@pytest.mark.parametrize("seminorm", [True, False])
def test_adjoint_takes_torchdiffeqs_steps_on_a_depth_independent_field(seminorm):
    field, z0 = Autonomous(), _z0()[:64]
    s = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    out = {}
    for engine in ("auto", "torchdiffeq"):
        counter = NFECounter()
        settings = SolverSettings(rtol=1e-6, atol=1e-6, sensitivity="adjoint", seminorm=seminorm, engine=engine)
        out[engine] = (_grads(field, z0, s, settings, counter), counter.count)
    assert out["auto"][1] == out["torchdiffeq"][1]
    assert torch.allclose(out["auto"][0], out["torchdiffeq"][0], rtol=1e-9, atol=1e-12)


def test_adjoint_counts_backward_evaluations_and_skips_frozen_parameters(monkeypatch):
    calls = _spy_adjoint(monkeypatch)
    field = DepthVaryingMLP()
    field.net[0].weight.requires_grad_(False)
    counter = NFECounter()
    s = torch.tensor([0.0, 1.0], dtype=torch.float64)
    z = odesolve(field, _z0()[:8], s, SolverSettings(sensitivity="adjoint"), counter=counter)
    forward = counter.count
    z[-1].sum().backward()
    assert calls and counter.count > forward > 7
    assert field.net[0].weight.grad is None and field.net[2].weight.grad is not None


def _spy_adjoint(monkeypatch):
    calls = []
    real = solve_module.dopri5_adjoint

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(solve_module, "dopri5_adjoint", spy)
    return calls


class Piecewise(nn.Module):
    """A stacked-style field: a different MLP on each of [0, 0.3), [0.3, 0.7), [0.7, 1]."""

    breaks = (0.3, 0.7)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.pieces = nn.ModuleList(
            nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double() for _ in range(3)
        )

    def forward(self, s, z):
        return self.pieces[sum(float(s.detach()) >= b for b in self.breaks)](z)


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_jumps_match_torchdiffeq_steps_values_and_gradients(sensitivity):
    field, z0 = Piecewise(), _z0()[:32]
    s = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    jumps = torch.tensor(Piecewise.breaks, dtype=torch.float64)
    out = {}
    for engine in ("auto", "torchdiffeq"):
        counter = NFECounter()
        settings = SolverSettings(rtol=1e-7, atol=1e-7, sensitivity=sensitivity, engine=engine)
        field.zero_grad()
        ys = odesolve(field, z0, s, settings, counter=counter, jump_t=jumps)
        forward = counter.count
        ys[-1].pow(2).mean().backward()
        grads = torch.cat([p.grad.flatten() for p in field.parameters()])
        out[engine] = (ys.detach(), grads, forward, counter.count)
    ours, ref = out["auto"], out["torchdiffeq"]
    assert ours[2:] == ref[2:]  # same forward and backward NFE
    assert torch.allclose(ours[0], ref[0], rtol=0, atol=1e-12)
    if sensitivity == "adjoint":
        assert torch.allclose(ours[1], ref[1], rtol=1e-9, atol=1e-12)


def test_without_jump_t_a_piecewise_field_costs_more_and_is_less_accurate():
    """Why jump_t matters: stepping blindly over the breaks takes more evaluations."""
    field, z0 = Piecewise(), _z0()[:32]
    s = torch.tensor([0.0, 1.0], dtype=torch.float64)
    jumps = torch.tensor(Piecewise.breaks, dtype=torch.float64)
    exact = odesolve(field, z0, s, SolverSettings(rtol=1e-12, atol=1e-12), jump_t=jumps)[-1]
    costs = {}
    for name, jumps in (("jump_t", torch.tensor(Piecewise.breaks, dtype=torch.float64)), ("blind", None)):
        counter = NFECounter()
        z = odesolve(field, z0, s, SolverSettings(rtol=1e-6, atol=1e-6), counter=counter, jump_t=jumps)[-1]
        costs[name] = (counter.count, float((z - exact).abs().max().detach()))
    assert costs["jump_t"][0] < costs["blind"][0]
    assert costs["jump_t"][1] < costs["blind"][1]


class WithIntegral(nn.Module):
    """A tuple state (z, q): dz/ds = MLP(z)(1 + 0.3 cos 3s), dq/ds = |z|² per sample (an
    integral loss channel, as the integral-loss and CNF models solve)."""

    def __init__(self) -> None:
        super().__init__()
        self.field = DepthVaryingMLP()

    def forward(self, s, state):
        z, _ = state
        return self.field(s, z), z.pow(2).sum(1)


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_tuple_states_match_torchdiffeq(sensitivity):
    dyn = WithIntegral()
    z0 = _z0()[:32]
    state = (z0, torch.zeros(32, dtype=torch.float64))
    s = torch.tensor([0.0, 0.6, 1.0], dtype=torch.float64)
    out = {}
    for engine in ("auto", "torchdiffeq"):
        counter = NFECounter()
        dyn.zero_grad()
        settings = SolverSettings(rtol=1e-7, atol=1e-7, sensitivity=sensitivity, engine=engine)
        zs, qs = odesolve(dyn, state, s, settings, counter=counter)
        forward = counter.count
        (zs[-1].pow(2).mean() + qs[-1].mean()).backward()
        out[engine] = (zs.detach(), qs.detach(), torch.cat([p.grad.flatten() for p in dyn.parameters()]), forward)
    (z_a, q_a, g_a, n_a), (z_b, q_b, g_b, n_b) = out["auto"], out["torchdiffeq"]
    assert z_a.shape == z_b.shape == (3, 32, 2) and q_a.shape == q_b.shape == (3, 32)
    assert n_a == n_b  # same forward steps: the same mixed norm over (z, q)
    assert torch.allclose(z_a, z_b, rtol=0, atol=1e-12) and torch.allclose(q_a, q_b, rtol=0, atol=1e-12)
    assert torch.allclose(g_a, g_b, rtol=1e-4)  # adjoint: torchdiffeq also controls the unused depth adjoint
