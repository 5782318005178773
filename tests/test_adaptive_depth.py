"""Adaptive depth: per-sample horizons S(x) by time rescaling. The Leibniz-rule gradient
dℓ/dS = ∂L/∂z(S)·f(S, z(S)) (+ l(S)) against autograd, autograd vs adjoint, signed S, the
learned horizon's bounds and bad options."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from nodex.errors import ConfigError
from nodex.models import GeneralNeuralODE
from nodex.models.fields import MLPField
from nodex.models.horizon import LearnedHorizon, build_learned_horizon
from nodex.ode import SolverSettings

TIGHT = SolverSettings(method="dopri5", rtol=1e-9, atol=1e-9)


class FixedHorizon(nn.Module):
    """S(x) = a leaf parameter per sample (so autograd gives dℓ/dS_i directly)."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.S = nn.Parameter(torch.tensor(values, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.S


class SquaredState(nn.Module):
    """Integral loss l(s, z, u, f) = Σ z² + s (depends on the depth too)."""

    def forward(self, s, z, u, f):
        return (z**2).sum(1) + s.reshape(-1).expand(z.shape[0])


def _tiny(horizon: nn.Module, integral: nn.Module | None = None, settings: SolverSettings = TIGHT) -> GeneralNeuralODE:
    torch.manual_seed(0)
    field = MLPField(2, 2, hidden=[8], depth="concat", zero_init_last=False).double()
    readout = nn.Linear(2, 1).double()
    return GeneralNeuralODE(nn.Identity(), field, readout, settings, horizon=horizon, integral_loss=integral)


@pytest.mark.parametrize("with_integral", [False, True])
def test_dl_dS_matches_the_leibniz_formula(with_integral):
    S = [0.4, 1.0, 1.7]
    integral = SquaredState() if with_integral else None
    model = _tiny(FixedHorizon(S), integral)
    x = torch.tensor([[0.5, -0.2], [-1.0, 0.3], [0.1, 0.9]], dtype=torch.float64)
    y = torch.tensor([[1.0], [-0.5], [0.2]], dtype=torch.float64)
    out = model(x)
    L = (out.y_hat - y).pow(2).mean()
    dL_dz = torch.autograd.grad(L, out.z_S, retain_graph=True)[0]
    loss = L + (out.loss_integral if with_integral else 0.0)
    loss.backward()
    autograd = model.horizon.S.grad
    # formula: ∂L/∂z(S_i) · f(S_i, z(S_i)) + (1/B) l(S_i, z(S_i))
    s_vec = torch.tensor(S, dtype=torch.float64)
    with torch.no_grad():
        f_S = model.field(s_vec, out.z_S, None)
        formula = (dL_dz * f_S).sum(1)
        if with_integral:
            formula = formula + SquaredState()(s_vec, out.z_S, None, f_S) / len(S)
    torch.testing.assert_close(autograd, formula, rtol=1e-6, atol=1e-9)
    assert autograd.abs().min().item() > 1e-4  # non-trivial gradients


def test_per_sample_horizon_equals_separate_fixed_horizon_solves():
    """z(τ=1) for S_i equals a plain solve over [0, S_i] for that sample alone."""
    S = [0.3, 1.2]
    model = _tiny(FixedHorizon(S))
    x = torch.tensor([[0.5, -0.2], [-1.0, 0.3]], dtype=torch.float64)
    with torch.no_grad():
        z_S = model(x).z_S
        for i, s in enumerate(S):
            plain = GeneralNeuralODE(nn.Identity(), model.field, model.readout, SolverSettings(rtol=1e-9, atol=1e-9), S=s)
            torch.testing.assert_close(z_S[i : i + 1], plain(x[i : i + 1]).z_S, rtol=1e-7, atol=1e-9)


def test_signed_horizon_integrates_backward():
    """dz/ds = a z: z(S) = x e^{aS}, also for S < 0."""
    field = MLPField(1, 1, hidden=[], bias=False, zero_init_last=False).double()
    with torch.no_grad():
        field.layers[0].weight.fill_(0.7)
    S = [-1.5, 0.0, 0.8]
    model = GeneralNeuralODE(nn.Identity(), field, nn.Identity(), TIGHT, horizon=FixedHorizon(S))
    x = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    expected = x * torch.exp(0.7 * torch.tensor(S, dtype=torch.float64))[:, None]
    with torch.no_grad():
        torch.testing.assert_close(model(x).z_S, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("with_integral", [False, True])
def test_horizon_gradients_agree_between_autograd_and_adjoint(with_integral):
    def grads(sensitivity: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        horizon = LearnedHorizon(2, hidden=[4], activation="tanh", s_min=-1.0, s_max=2.0, init=0.8).double()
        nn.init.normal_(horizon.net[-1].weight, std=0.5)
        settings = SolverSettings(method="dopri5", rtol=1e-8, atol=1e-8, sensitivity=sensitivity)
        model = _tiny(horizon, SquaredState() if with_integral else None, settings)
        x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        out = model(x)
        loss = out.y_hat.pow(2).mean() + (out.loss_integral if with_integral else 0.0)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    a, b = grads("autograd"), grads("adjoint")
    assert set(a) == set(b) and any(n.startswith("horizon.") for n in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-8, msg=name)
    assert a["horizon.net.2.weight"].abs().max().item() > 1e-4


def test_learned_horizon_starts_at_init_and_stays_in_bounds():
    g = LearnedHorizon(3, hidden=[8], activation="tanh", s_min=0.2, s_max=3.0, init=1.0)
    x = torch.randn(5, 3)
    torch.testing.assert_close(g(x), torch.full((5,), 1.0))
    with torch.no_grad():
        g.net[-1].weight.fill_(100.0)
    S = g(torch.cat([x, 1e3 * x]))
    assert (S >= 0.2).all() and (S <= 3.0).all()  # sigmoid saturates to the bounds in float32
    assert S.max().item() > 2.9 and S.min().item() < 0.3


def test_adaptive_depth_logs_the_horizon_in_extras(compose_cfg):
    from nodex.models import DataSpec, build_model

    cfg = compose_cfg(["model=adaptive_depth"]).model
    model = build_model(cfg, DataSpec((2,), 2), SolverSettings())
    out = model(torch.randn(7, 2))
    assert out.extras["horizon"].shape == (7,)
    torch.testing.assert_close(out.extras["horizon"], torch.full((7,), 1.0))  # init = model.horizon.S


@pytest.mark.parametrize(
    "options, needle",
    [
        ({"s_min": 2.0, "s_max": 1.0}, "model.horizon.s_min=2.0 must be below model.horizon.s_max=1.0"),
        ({"s_min": -1.0, "s_max": 2.0}, "model.horizon.s_min=-1.0 is negative: set model.horizon.signed=true"),
        ({"s_min": 0.0, "s_max": 2.0, "init": 2.0}, "model.horizon.init=2.0 must lie strictly inside (s_min, s_max) = (0.0, 2.0)"),
        ({"activation": "wobble"}, "model.horizon.activation='wobble' is unknown; choose one of:"),
        ({"hidden": [0]}, "model.horizon.hidden=[0] must be a list of positive widths"),
        ({"signed": "yes"}, "model.horizon.signed='yes' must be true or false"),
    ],
)
def test_bad_horizon_options_name_the_key(options, needle):
    with pytest.raises(ConfigError) as exc:
        build_learned_horizon(OmegaConf.create({"kind": "learned", **options}), (2,), 1.0)
    assert needle in str(exc.value)


@pytest.mark.slow
def test_reflection_adaptive_depth_fits_the_reflection(train_run):
    """Paper E2 + §1.11: a learned signed horizon fits φ(x) = −x with an autonomous field."""
    _, res, code, err = train_run(
        "experiment=reflection_adaptive_depth", "data.n_train=100", "data.n_val=100", "data.n_test=200",
        "trainer.max_steps=150", "trainer.val_every=150", "trainer.checkpoint_every=150", "trainer.log_every=50",
    )
    assert code == 0, err
    assert res["metrics"]["test/mse"] < 1e-3


@pytest.mark.slow
def test_adaptive_depth_plots_the_horizon_and_error_coloured_trajectories(compose_cfg, tmp_path):
    from nodex.data import build_data
    from nodex.models import DataSpec, build_model
    from nodex.train.logs import RunLogger
    from nodex.viz import diagnostics

    cfg = compose_cfg(["experiment=reflection_adaptive_depth", "data.n_test=50"])
    data = build_data(cfg.data, 0)
    model = build_model(cfg.model, DataSpec((1,), 1), SolverSettings(rtol=1e-3, atol=1e-3))
    logger = RunLogger(tmp_path, tensorboard=False)
    diagnostics(model, data, None, logger, 0)
    logger.close()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["horizon.png", "regression_trajectories.png"]
