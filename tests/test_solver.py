"""Solver wrapper: convergence orders, exact NFE, closed forms, adjoint = autograd, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nodex.errors import ConfigError, SolverError
from nodex.ode import NFECounter, SolverSettings, available_methods, odesolve


class Linear(nn.Module):
    """dz/ds = A z."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, s, z):
        return z @ self.A.T


class DepthVarying(nn.Module):
    """dz/ds = cos(2πs)·z: a field that depends on s (catches stage-time bugs)."""

    def forward(self, s, z):
        return torch.cos(2 * math.pi * s) * z


def _span(S=1.0):
    return torch.tensor([0.0, S], dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_rk4_nfe_is_exactly_four_per_step(k):
    counter = NFECounter()
    settings = SolverSettings(method="rk4", step_size=1.0 / k)
    odesolve(Linear(-torch.eye(2)), torch.ones(3, 2), torch.tensor([0.0, 1.0]), settings, counter=counter)
    assert counter.count == 4 * k


def test_dopri5_matches_matrix_exponential():
    torch.manual_seed(0)
    A = torch.tensor([[-0.5, 2.0], [-2.0, -0.3]], dtype=torch.float64)
    z0 = torch.randn(4, 2, dtype=torch.float64)
    settings = SolverSettings(method="dopri5", rtol=1e-9, atol=1e-9)
    z1 = odesolve(Linear(A).double(), z0, _span(), settings)[-1]
    expected = z0 @ torch.linalg.matrix_exp(A).T
    assert torch.allclose(z1, expected, atol=1e-7)


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_methods_reach_their_order_on_a_depth_varying_field(method, order):
    z0 = torch.ones(1, 1, dtype=torch.float64)
    S = 0.3  # z(S) = exp(∫_0^S cos(2πs) ds) = exp(sin(2πS)/(2π))
    exact = math.exp(math.sin(2 * math.pi * S) / (2 * math.pi))
    errors = []
    for h in (S / 8, S / 16):
        z = odesolve(DepthVarying(), z0, _span(S), SolverSettings(method=method, step_size=h))[-1]
        errors.append(abs(float(z) - exact))
    observed = math.log2(errors[0] / errors[1])
    assert abs(observed - order) < 0.3, (method, observed)


def test_adjoint_gradients_match_autograd():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()

    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, s, z):
            return self.net(z)

    z0 = torch.randn(8, 2, dtype=torch.float64)
    grads = {}
    for sens in ("autograd", "adjoint"):
        net.zero_grad()
        settings = SolverSettings(method="dopri5", rtol=1e-10, atol=1e-10, sensitivity=sens)
        loss = odesolve(F(), z0, _span(), settings)[-1].pow(2).sum()
        loss.backward()
        grads[sens] = torch.cat([p.grad.flatten() for p in net.parameters()])
    rel = (grads["autograd"] - grads["adjoint"]).norm() / grads["autograd"].norm()
    assert rel < 1e-4


def test_adjoint_counts_backward_nfe():
    counter = NFECounter()
    field = Linear(-torch.eye(2))
    settings = SolverSettings(method="rk4", step_size=0.25, sensitivity="adjoint")
    z = odesolve(field, torch.ones(2, 2), torch.tensor([0.0, 1.0]), settings, counter=counter)[-1]
    assert counter.count == 16
    z.sum().backward()
    assert counter.count == 32  # the adjoint integrates back with the same 4 rk4 steps


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        SolverSettings(method="rk5")
    assert "dopri5" in str(err.value) and "rk4" in str(err.value)
    assert set(available_methods()) >= {"dopri5", "rk4", "euler", "bosh3"}


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"rtol": -1e-3}, "rtol=-0.001 must be positive (e.g. rtol=1e-4)"),
        ({"atol": 0.0}, "atol=0.0 must be positive (e.g. atol=1e-4)"),
        ({"method": "rk4", "step_size": 0.0}, "step_size=0.0 must be positive (e.g. step_size=0.1) or null"),
        ({"method": "rk4", "step_size": None}, "method=rk4 is a fixed-step method: set its step_size (e.g. 0.1)"),
        ({"sensitivity": "backprop"}, "sensitivity='backprop'; choose one of: autograd, adjoint"),
        ({"max_num_steps": 0}, "max_num_steps=0 must be a positive integer"),
        ({"atol": float("inf")}, "atol=inf must be finite (e.g. atol=1e-4)"),
        ({"rtol": float("inf"), "atol": float("inf")}, "rtol=inf must be finite (e.g. rtol=1e-4)"),
        ({"method": "rk4", "step_size": float("inf")},
         "step_size=inf must be finite (e.g. step_size=0.1; one step: the depth)"),
    ],
)
def test_bad_solver_settings_are_value_errors_about_the_argument(kwargs, needle):
    with pytest.raises(ValueError) as err:
        SolverSettings(**kwargs)
    assert str(err.value) == needle


@pytest.mark.parametrize(
    "override,line",
    [
        ("solver.rtol=-1e-3", "solver.rtol=-0.001 must be positive (e.g. rtol=1e-4)"),
        ("solver.max_num_steps=0", "solver.max_num_steps=0 must be a positive integer"),
        ("solver.step_size=null", "solver.method=rk4 is a fixed-step method: set its step_size (e.g. 0.1)"),
    ],
)
def test_the_settings_builder_names_the_solver_key(override, line):
    from nodex.config import compose
    from nodex.train.setup import solver_settings

    cfg = compose(["solver=rk4", override])
    with pytest.raises(ConfigError) as err:
        solver_settings(cfg.solver)
    assert str(err.value) == line


def test_the_horizon_is_not_a_solver_setting():
    with pytest.raises(TypeError):
        SolverSettings(S=2.0)  # the model's: model.horizon.S -> GeneralNeuralODE(..., S=)


def test_max_num_steps_becomes_a_solver_error_with_the_settings():
    settings = SolverSettings(method="dopri5", rtol=1e-12, atol=1e-12, max_num_steps=3)
    with pytest.raises(SolverError) as err:
        rotation = Linear(torch.tensor([[0.0, 20.0], [-20.0, 0.0]]))
        odesolve(rotation, torch.ones(1, 2), torch.tensor([0.0, 1.0]), settings)
    msg = str(err.value)
    assert "max_num_steps exceeded" in msg and "dopri5" in msg and "rtol=1e-12" in msg and "\n" not in msg


class RotationWithQuadrature(nn.Module):
    """``(z, q)``: ``z' = A z`` (a rotation; ``A`` a parameter), ``q' = sin²(5s)·|z|²`` per sample: an integral the
    dynamics never read, varying faster in ``s`` than ``z``. ``∫_0^2 q' ds = |z0|² (1 − sin(20)/20)``."""

    def __init__(self) -> None:
        super().__init__()
        self.rotation = Linear(torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64))

    def forward(self, s, state):
        z, _ = state
        return self.rotation(s, z), torch.sin(5 * s) ** 2 * z.pow(2).sum(1)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_quadratures_ride_on_the_steps_the_state_chooses(method):
    z0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    exact = z0.pow(2).sum(1) * (1 - math.sin(20) / 20)
    grads, nfe = {}, {}
    for sensitivity in ("autograd", "adjoint"):
        settings = SolverSettings(method=method, rtol=1e-6, atol=1e-6, sensitivity=sensitivity)
        dyn = RotationWithQuadrature()
        alone, riding, controlled = NFECounter(), NFECounter(), NFECounter()
        zs = odesolve(dyn.rotation, z0, _span(2.0), settings, counter=alone)
        state = (z0, torch.zeros(2, dtype=torch.float64))
        z, q = odesolve(dyn, state, _span(2.0), settings, counter=riding, quadratures=1)
        odesolve(dyn, state, _span(2.0), settings, counter=controlled)
        nfe[sensitivity] = (alone.count, riding.count, controlled.count)
        assert riding.count == alone.count < controlled.count  # the state's steps, not the integral's
        assert torch.allclose(z[-1], zs[-1].detach(), rtol=1e-12, atol=0)
        assert torch.allclose(q[-1], exact, rtol=1e-3)  # a 5th-order quadrature on those steps
        (z[-1].sum() + q[-1].sum()).backward()
        grads[sensitivity] = dyn.rotation.A.grad
    assert nfe["autograd"] == nfe["adjoint"]  # forward solves
    dyn = RotationWithQuadrature()  # the gradient of a solve that controls both parts, tightly
    tight = SolverSettings(method=method, rtol=1e-10, atol=1e-10)
    z, q = odesolve(dyn, (z0, torch.zeros(2, dtype=torch.float64)), _span(2.0), tight)
    (z[-1].sum() + q[-1].sum()).backward()
    for sensitivity, g in grads.items():  # the quadrature's error, not the tolerance's, bounds theirs
        assert float((g - dyn.rotation.A.grad).norm() / dyn.rotation.A.grad.norm()) < 1e-3, sensitivity


def test_quadratures_must_leave_a_part_under_error_control():
    settings = SolverSettings(method="dopri5", rtol=1e-6, atol=1e-6)
    state = (torch.ones(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^quadratures=2 must leave at least one of the state's 2 part\(s\) under"):
        odesolve(RotationWithQuadrature(), state, _span(), settings, quadratures=2)
    with pytest.raises(ValueError, match=r"^quadratures=1 must leave at least one of the state's 1 part"):
        odesolve(Linear(torch.eye(2, dtype=torch.float64)), state[0], _span(), settings, quadratures=1)
    elsewhere = SolverSettings(method="dopri5", rtol=1e-6, atol=1e-6, engine="torchdiffeq")
    with pytest.raises(ValueError, match=r"^quadratures=1 need nodex's adaptive engine .* not dopri5 rtol=1e-06"):
        odesolve(RotationWithQuadrature(), state, _span(), elsewhere, quadratures=1)


def test_error_norms_leave_out_the_skipped_segments():
    from nodex.ode.lean.member_steps import member_rms_norm
    from nodex.ode.lean.runge_kutta import max_rms_norm

    x = torch.tensor([3.0, 4.0, 100.0, 1.0, 1.0, 1.0], dtype=torch.float64)  # segments [3, 4] | [100] | [1, 1, 1]
    bounds = [0, 2, 3, 6]
    assert max_rms_norm(bounds)(x) == 100.0
    assert max_rms_norm(bounds, skip=(1,))(x) == pytest.approx(math.sqrt(12.5))
    assert max_rms_norm(bounds, skip=(0, 1))(x) == 1.0
    rows = torch.stack([x, 2 * x])
    expected = torch.tensor([1.0, 2.0], dtype=torch.float64) * math.sqrt(12.5)
    assert torch.allclose(member_rms_norm(bounds, skip=(1,))(rows), expected)
    with pytest.raises(ValueError, match=r"^the error norm needs a part of the state"):
        max_rms_norm(bounds, skip=(0, 1, 2))


def test_quadratures_ride_on_each_members_own_steps():
    rotation = RotationWithQuadrature().rotation

    def rows(s, state):  # s: (K,), each member's own depth
        z, _ = state
        return rotation(s, z), torch.sin(5 * s)[:, None] ** 2 * z.pow(2).sum(-1)

    torch.manual_seed(0)
    state = (torch.randn(3, 4, 2, dtype=torch.float64), torch.zeros(3, 4, dtype=torch.float64))
    settings = SolverSettings(method="dopri5", rtol=1e-6, atol=1e-6)
    alone, riding, controlled = NFECounter(), NFECounter(), NFECounter()
    odesolve(lambda s, z: rotation(s, z), state[0], _span(2.0), settings, counter=alone, per_member=True)
    odesolve(rows, state, _span(2.0), settings, counter=riding, per_member=True, quadratures=1)
    odesolve(rows, state, _span(2.0), settings, counter=controlled, per_member=True)
    assert riding.members == alone.members and all(r < c for r, c in zip(riding.members, controlled.members))


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_step_beyond_the_depth_takes_one_step_not_none(method, per_step, dtype):
    """step_size 1e9 over [0, 1]: one step of the whole depth (the grid had one node in float32, so the solve
    returned z0 with 0 evaluations and a model trained as its readout alone)."""
    counter = NFECounter()
    z0 = torch.ones(3, 2, dtype=dtype)
    z = odesolve(lambda s, z: -z, z0, torch.tensor([0.0, 1.0], dtype=dtype),
                 SolverSettings(method=method, step_size=1e9), counter=counter)[-1]
    one_step = odesolve(lambda s, z: -z, z0, torch.tensor([0.0, 1.0], dtype=dtype),
                        SolverSettings(method=method, step_size=1.0))[-1]
    assert counter.count == per_step and torch.equal(z, one_step) and not torch.equal(z, z0)
