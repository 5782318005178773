"""nodex's lean euler / midpoint / rk4: bit-for-bit torchdiffeq's values (gradients to rounding), its NFE,
and the dispatch (backprop and the adjoint; ``engine=torchdiffeq`` and other options stay torchdiffeq's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from nodex.ode import NFECounter, SolverSettings, odesolve
from nodex.ode import solve as solve_module
from nodex.ode.lean.fixed_grid import fixed_grid


class ConcatField(nn.Module):
    """f(s, z) = MLP([z, s]): a trainable field whose value depends on every stage depth."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2)).to(dtype)

    def forward(self, s, z):
        return self.net(torch.cat([z, s.expand(z.shape[0], 1)], 1))


GRIDS = [
    ([0.0, 1.0], 0.1),  # 10 steps; the last grid point is moved onto the end
    ([0.0, 0.35, 1.0], 0.1),  # an output depth between grid points: linear interpolation
    ([0.0, 0.3, 0.7, 1.3], 0.07),  # step size that does not divide the span
    ([0.2, 1.0], 0.3),  # non-zero start, a short last step
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("t,h", GRIDS)
def test_values_are_torchdiffeqs_bit_for_bit_and_gradients_to_rounding(dtype, method, t, h):
    field = ConcatField(dtype)
    z0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
    theirs = odeint(field, z0, torch.tensor(t, dtype=dtype), method=method, options={"step_size": h})
    ref_grads = torch.autograd.grad(theirs.pow(2).sum(), list(field.parameters()))
    ours = fixed_grid(field, z0, t, h, method, dtype)
    grads = torch.autograd.grad(ours.pow(2).sum(), list(field.parameters()))
    assert torch.equal(ours, theirs)
    # gradients: equal up to the order autograd sums a state's uses (interpolated outputs): a few ulp
    eps = torch.finfo(dtype).eps
    assert all((a - b).abs().max() <= 4 * eps * b.abs().max() for a, b in zip(grads, ref_grads))


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_odesolve_counts_the_stages_of_every_step(method, per_step):
    counter = NFECounter()
    settings = SolverSettings(method=method, step_size=0.1)
    odesolve(ConcatField(torch.float32), torch.ones(3, 2), torch.tensor([0.0, 0.5, 1.0]), settings, counter=counter)
    assert counter.count == 10 * per_step


def test_tuple_states_match_torchdiffeq():
    field = ConcatField(torch.float64)
    z0 = (torch.randn(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))

    def dynamics(s, zs):  # a state and its running integral of |f|²
        dz = field(s, zs[0])
        return dz, dz.pow(2).sum(1, keepdim=True)

    s = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    ours = odesolve(dynamics, z0, s, SolverSettings(method="rk4", step_size=0.1))
    theirs = odesolve(dynamics, z0, s, SolverSettings(method="rk4", step_size=0.1, engine="torchdiffeq"))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def _spy(monkeypatch):
    calls = []
    for name in ("fixed_grid", "fixed_grid_adjoint"):
        real = getattr(solve_module, name)

        def spy(*args, real=real, **kwargs):
            calls.append(1)
            return real(*args, **kwargs)

        monkeypatch.setattr(solve_module, name, spy)
    return calls


@pytest.mark.parametrize(
    "settings,s,lean",
    [
        ({"method": "rk4", "step_size": 0.1}, [0.0, 1.0], True),
        ({"method": "euler", "step_size": 0.1}, [0.0, 0.5, 1.0], True),
        ({"method": "midpoint", "step_size": 0.1}, [0.0, 1.0], True),
        ({"method": "rk4", "step_size": 0.1, "sensitivity": "adjoint"}, [0.0, 1.0], True),
        ({"method": "rk4", "step_size": 0.1, "engine": "torchdiffeq"}, [0.0, 1.0], False),
        ({"method": "rk4", "step_size": 0.1, "options": {"perturb": True}}, [0.0, 1.0], False),
        ({"method": "heun3", "step_size": 0.1}, [0.0, 1.0], False),
        ({"method": "rk4", "step_size": 0.1}, [1.0, 0.0], False),
    ],
)
def test_dispatch_takes_the_lean_grid_only_where_it_applies(monkeypatch, settings, s, lean):
    calls = _spy(monkeypatch)
    odesolve(ConcatField(torch.float32), torch.ones(3, 2), torch.tensor(s), SolverSettings(**settings))
    assert bool(calls) == lean


def test_lean_and_torchdiffeq_engines_train_identically():
    """A few optimiser steps through odesolve: the two engines give the same parameters."""
    results = []
    for engine in ("auto", "torchdiffeq"):
        field = ConcatField(torch.float32)
        opt = torch.optim.Adam(field.parameters(), lr=1e-2)
        settings = SolverSettings(method="rk4", step_size=0.25, engine=engine)
        for step in range(3):
            z0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(step))
            loss = odesolve(field, z0, torch.tensor([0.0, 1.0]), settings)[-1].pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append([p.detach().clone() for p in field.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_device_depths_are_read_back_once_per_tensor_and_version(monkeypatch):
    """What keeps a GPU solve free of host syncs: the depth buffer's values are remembered per
    tensor object and version (exercised here on CPU tensors, which never need it)."""
    reads = []
    real_tolist = torch.Tensor.tolist

    def counting_tolist(self):
        reads.append(1)
        return real_tolist(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    span = torch.tensor([0.0, 1.0])
    assert solve_module.remembered_tolist(span) == [0.0, 1.0]
    assert solve_module.remembered_tolist(span) == [0.0, 1.0] and len(reads) == 1  # remembered
    span[1] = 2.0  # an in-place change bumps the version: read again
    assert solve_module.remembered_tolist(span) == [0.0, 2.0] and len(reads) == 2
    other = torch.tensor([0.0, 2.0])  # another tensor with the same values is its own entry
    assert solve_module.remembered_tolist(other) == [0.0, 2.0] and len(reads) == 3
    n = len(solve_module._HOST_DEPTHS)
    del other
    assert len(solve_module._HOST_DEPTHS) == n - 1  # entries go with their tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_lean_adjoint_equals_torchdiffeqs_fixed_grid_adjoint(dtype, method):
    """The adjoint on nodex's grid (no jump_t): torchdiffeq's values, gradients and NFE (forward + backward)."""
    out = {}
    for engine in ("auto", "torchdiffeq"):
        field, counter = ConcatField(dtype), NFECounter()
        z0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=dtype)
        settings = SolverSettings(method=method, step_size=0.1, sensitivity="adjoint", engine=engine)
        ys = odesolve(field, z0, torch.tensor([0.0, 0.35, 1.0], dtype=dtype), settings, counter=counter)
        grads = torch.autograd.grad(ys.pow(2).sum(), list(field.parameters()))
        out[engine] = (ys.detach(), torch.cat([g.reshape(-1) for g in grads]), counter.count)
    (ys, g, nfe), (ys_ref, g_ref, nfe_ref) = out["auto"], out["torchdiffeq"]
    assert torch.equal(ys, ys_ref) and nfe == nfe_ref
    assert float((g - g_ref).abs().max()) <= 4 * torch.finfo(dtype).eps * float(g_ref.abs().max())
