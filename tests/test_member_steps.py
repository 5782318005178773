"""Per-member adaptive steps (:mod:`nodex.ode.lean.member_steps`): K independent problems in one batched solve,
each with its own error norm, step sizes and accept/reject, take the steps (and NFE) of their own solves — at the
solver, at the ensemble model, and through training (a member's result.json is its separate run's)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import FAST
from nodex.errors import SolverError
from nodex.models.ensemble import EnsembleNeuralODE, member_output
from nodex.ode import NFECounter, SolverSettings, odesolve
from nodex.train.run import run_train
from nodex.train.setup import Pipeline

F64 = torch.float64
DEPTHS = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
JUMPS = torch.tensor([0.5], dtype=F64)
# member k: dz/ds = -λ_k z + sin(ω_k s): member 1 is stiff and fast (many steps), member 0 slow (few)
LAMBDAS, OMEGAS = (1.0, 30.0, 5.0), (1.0, 20.0, 3.0)


class Members(nn.Module):
    """The three members' fields as one batched field; ``s`` 0-d or ``(K,)``; ``z`` ``(K, B, n)``."""

    def __init__(self) -> None:
        super().__init__()
        self.lam = nn.Parameter(torch.tensor(LAMBDAS, dtype=F64))
        self.register_buffer("omega", torch.tensor(OMEGAS, dtype=F64))

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        s = s.reshape(-1, 1, 1) if s.dim() else s
        return -self.lam.reshape(-1, 1, 1) * z + torch.sin(self.omega.reshape(-1, 1, 1) * s)


class Member(nn.Module):
    def __init__(self, lam: float, omega: float) -> None:
        super().__init__()
        self.lam = nn.Parameter(torch.tensor(lam, dtype=F64))
        self.omega = omega

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -self.lam * z + torch.sin(self.omega * s)


def _z0() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, 4, 2, dtype=F64)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
@pytest.mark.parametrize("jumps", [None, JUMPS], ids=["smooth", "jump_t"])
def test_each_member_takes_its_own_solves_steps(method, sensitivity, jumps):
    """Same forward and backward NFE as the member's own solve, values and gradients to 1e-12, while the
    members need very different steps (a shared step sequence would give every member the stiff one's)."""
    z0, field = _z0(), Members()
    settings = SolverSettings(method=method, rtol=1e-6, atol=1e-6, sensitivity=sensitivity)
    counter = NFECounter()
    ys = odesolve(field, z0, DEPTHS, settings, counter=counter, jump_t=jumps, per_member=True)
    forward = list(counter.members)
    ys.pow(2).sum().backward()
    backward = [b - f for b, f in zip(counter.members, forward)]
    # a batched call while any member integrates (a jump's restart: once for the members that reach it)
    assert max(forward) + max(backward) <= counter.count <= sum(forward) + sum(backward)
    for k, (lam, omega) in enumerate(zip(LAMBDAS, OMEGAS)):
        own, own_counter = Member(lam, omega), NFECounter()
        y_own = odesolve(own, z0[k], DEPTHS, settings, counter=own_counter, jump_t=jumps)
        own_forward = own_counter.count
        y_own.pow(2).sum().backward()
        assert forward[k] == own_forward and backward[k] == own_counter.count - own_forward, k
        assert torch.allclose(ys[:, k], y_own, atol=1e-12, rtol=0)
        assert float(field.lam.grad[k]) == pytest.approx(float(own.lam.grad), rel=1e-10, abs=1e-14)
    assert forward[1] > 3 * forward[0]  # the members' steps really differ


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_per_member_adjoint_gradient_equals_autograd_and_finite_differences(method):
    """A tuple state (an integral channel) and non-seminorm error control: adjoint = autograd = central FD. (Milder
    rates than the stiff member's λ = 30: integrating that backward in depth is unstable for any adjoint.)"""
    z0, lambdas = _z0(), torch.tensor([1.0, 3.0, 0.5], dtype=F64)

    def solve(sensitivity: str, lam: torch.Tensor = lambdas) -> torch.Tensor:
        field = Members()
        field.lam.data.copy_(lam)
        dynamics = lambda s, st: (field(s, st[0]), st[0].pow(2).sum(-1))  # noqa: E731
        settings = SolverSettings(method=method, rtol=1e-9, atol=1e-9, sensitivity=sensitivity, seminorm=False)
        zs, qs = odesolve(dynamics, (z0, torch.zeros(3, 4, dtype=F64)), DEPTHS, settings, jump_t=JUMPS,
                          adjoint_params=(field.lam,), per_member=True)
        loss = zs[-1].sum(dim=(1, 2)) + qs[-1].sum(dim=1)  # (K,): member k's loss
        if lam is not lambdas:
            return loss.detach()
        loss.sum().backward()
        return field.lam.grad

    grads = {s: solve(s) for s in ("autograd", "adjoint")}
    eps = 1e-6
    fd = (solve("autograd", lambdas + eps) - solve("autograd", lambdas - eps)) / (2 * eps)  # ∂loss_k/∂λ_k
    assert torch.allclose(grads["adjoint"], grads["autograd"], rtol=1e-6, atol=0)
    assert torch.allclose(grads["autograd"], fd, rtol=1e-5, atol=0)  # FD: the steps move with λ (measured 2e-6)


def test_a_member_that_fails_names_the_solver_settings():
    field = Members()
    with torch.no_grad():
        field.lam.copy_(torch.tensor([1.0, 1e9, 1.0], dtype=F64))  # member 1 needs more steps than allowed
    settings = SolverSettings(method="dopri5", rtol=1e-6, atol=1e-6, max_num_steps=50)
    with pytest.raises(SolverError, match=r"solver failed \(max_num_steps exceeded \(50>=50\)\) with dopri5"):
        odesolve(field, _z0(), DEPTHS, settings, per_member=True)


def test_settings_say_whether_members_take_their_own_steps():
    assert SolverSettings(method="dopri5").per_member_steps and SolverSettings(method="tsit5").per_member_steps
    assert not SolverSettings(method="dopri5", engine="torchdiffeq").per_member_steps
    assert not SolverSettings(method="bosh3").per_member_steps
    assert not SolverSettings(method="rk4", step_size=0.1).per_member_steps


# Depth-dependent fields get each member's depth (s of shape (K,)): on the batched-matmul fast path and under vmap.
VARIANTS = [
    ["model=vanilla"],
    ["model=depthcat"],
    ["model=galnode"],
    ["model=stacked"],
    ["model=data_control"],
    ["experiment=spheres_augmentation_anode"],
    ["experiment=spheres_augmentation_second_order"],
    ["experiment=galerkin_tracking", "data.n_train=64"],  # integral loss (tuple state), adjoint
]


@pytest.mark.slow
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "vmap"])
@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: o[0].split("=")[1])
def test_stacked_members_with_their_own_steps_equal_plain_models(compose_cfg, overrides, batched):
    cfg = compose_cfg([*overrides, "solver=dopri5", "solver.rtol=1e-5", "solver.atol=1e-5", "trainer.device=cpu",
                       "data.n_val=16", "data.n_test=16"])
    pipes = []
    for k in range(2):
        c = cfg.copy()
        c.seed = k
        pipes.append(Pipeline(c))
        with torch.no_grad():  # members far apart: different dynamics, different steps
            for p in pipes[-1].model.parameters():
                p.add_((0.05 + 0.3 * k) * torch.randn_like(p))
    ens = EnsembleNeuralODE([p.model for p in pipes])
    ens.use_batched_field = batched
    X = torch.stack([p.data.train[0][:8] for p in pipes])
    Y = torch.stack([p.data.train[1][:8] for p in pipes])
    out = ens(X)
    forward = list(ens.nfe.members)
    sum(p.task.loss(member_output(out, k), Y[k])[0] for k, p in enumerate(pipes)).backward()
    backward = [b - f for b, f in zip(ens.nfe.members, forward)]
    for k, p in enumerate(pipes):
        p.model.nfe.reset()
        own = p.model(X[k])
        own_forward = p.model.nfe.count
        p.task.loss(own, Y[k])[0].backward()
        assert (forward[k], backward[k]) == (own_forward, p.model.nfe.count - own_forward), k
        assert torch.allclose(own.y_hat, out.y_hat[k], atol=1e-5, rtol=0)
        for name, stacked in zip(ens.param_names, ens.parameters()):
            grad = p.model.get_parameter(name).grad
            grad = grad if grad is not None else torch.zeros_like(stacked[k])
            assert torch.allclose(grad, stacked.grad[k], atol=1e-5, rtol=1e-4), name


@pytest.mark.slow
@pytest.mark.parametrize("sensitivity", ["adjoint", "autograd"])
def test_ensemble_members_report_their_separate_runs(compose_cfg, tmp_path, sensitivity):
    """A few training steps of annuli_data_control (small data), 3 members: each member's result.json has its
    separate run's forward and backward NFE and test metrics (test loss to 1e-4 relative)."""
    overrides = ["experiment=annuli_data_control", *FAST, "trainer.max_steps=6", "trainer.log_every=3",
                 "trainer.val_every=6", "trainer.checkpoint_every=6", "logger.tensorboard=false",
                 "trainer.device=cpu", f"solver.sensitivity={sensitivity}"]
    summary = run_train(compose_cfg([*overrides, "trainer.ensemble=3"]), tmp_path / "ens")
    assert summary["status"] == "completed" and summary["shared_step_sizes"] is False
    nfes = []
    for k in range(3):
        sep = run_train(compose_cfg([*overrides, f"seed={k}"]), tmp_path / f"sep-{k}")
        member = json.loads((tmp_path / "ens" / f"member-{k}" / "result.json").read_text())
        assert (member["nfe_forward"], member["nfe_backward"]) == (sep["nfe_forward"], sep["nfe_backward"]), k
        assert member["metrics"]["test/loss"] == pytest.approx(sep["metrics"]["test/loss"], rel=1e-4)
        assert member["metrics"]["test/accuracy"] == pytest.approx(sep["metrics"]["test/accuracy"], abs=1e-6)
        nfes.append(member["nfe_forward"])
    assert summary["nfe_forward"] >= max(nfes)  # the batched solve runs while any member integrates
