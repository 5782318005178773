"""Integral losses (the generalized adjoint, paper §1.10): closed-form values, gradients under
autograd and adjoint against finite differences (including a loss with its own parameters),
the tracking task's metrics and the logged loss parts."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from nodex.data import DataBundle
from nodex.errors import ConfigError
from nodex.models import GeneralNeuralODE
from nodex.models.build import INTEGRAL_LOSSES
from nodex.models.fields import MLPField
from nodex.models.integral import CircleReference, TrackingLoss
from nodex.ode import SolverSettings
from nodex.train.tasks.tracking import Tracking

TIGHT = SolverSettings(method="dopri5", rtol=1e-10, atol=1e-10)


def _linear_field(W: torch.Tensor) -> MLPField:
    """f(s, z) = W z (one linear layer, no bias), float64."""
    field = MLPField(2, 2, hidden=[], depth="none", bias=False, zero_init_last=False).double()
    with torch.no_grad():
        field.layers[0].weight.copy_(W)
    return field


def _loss(kind: str, **opts):
    return INTEGRAL_LOSSES.get(kind)(OmegaConf.create({"kind": kind, **opts}), (2,), 1.0).double()


@pytest.mark.parametrize(
    "kind,expected",
    [
        # z' = λz: ∫_0^1 Σ z² = |z0|² (e^{2λ} − 1)/(2λ); kinetic ‖f‖² = λ² of that; l1: Σ|z0| (e^λ − 1)/λ
        ("l2", lambda lam, z0: z0.pow(2).sum(1) * (math.exp(2 * lam) - 1) / (2 * lam)),
        ("kinetic", lambda lam, z0: lam**2 * z0.pow(2).sum(1) * (math.exp(2 * lam) - 1) / (2 * lam)),
        ("l1", lambda lam, z0: z0.abs().sum(1) * (math.exp(lam) - 1) / lam),
    ],
)
def test_regularisers_integrate_to_their_closed_forms(kind, expected):
    lam = -0.7
    model = GeneralNeuralODE(torch.nn.Identity(), _linear_field(lam * torch.eye(2, dtype=torch.float64)), torch.nn.Identity(), TIGHT, integral_loss=_loss(kind, weight=2.0))
    z0 = torch.tensor([[1.0, -2.0], [0.5, 0.3]], dtype=torch.float64)
    out = model(z0)
    assert torch.allclose(out.loss_integral, 2.0 * expected(lam, z0).mean(), rtol=1e-8)


def test_tracking_loss_of_a_resting_state_integrates_to_its_closed_form():
    # f = 0, z ≡ z0 = [a, b]: ∫_0^1 mean((a − cos 2πs)², (b − sin 2πs)²) ds = (a² + b² + 1)/2
    model = GeneralNeuralODE(torch.nn.Identity(), _linear_field(torch.zeros(2, 2, dtype=torch.float64)), torch.nn.Identity(), TIGHT, integral_loss=_loss("tracking"))
    z0 = torch.tensor([[1.0, 0.0], [0.3, -0.4]], dtype=torch.float64)
    assert torch.allclose(model(z0).loss_integral, ((z0.pow(2).sum(1) + 1) / 2).mean(), rtol=1e-8)


def _tiny_model(sensitivity: str, rtol: float = 1e-7) -> GeneralNeuralODE:
    """A GalNODE on R² with a tracking loss whose reference radius and phase are parameters."""
    torch.manual_seed(0)
    opts = {"basis": "fourier", "m": 3, "init": "normal", "init_std": 0.4}
    field = MLPField(2, 2, hidden=[3], depth="galerkin", depth_layers=[0], depth_options=opts, zero_init_last=False).double()
    loss = TrackingLoss(CircleReference(radius=0.8, phase=0.3, learnable=True), [0, 1]).double()
    settings = SolverSettings(method="dopri5", rtol=rtol, atol=rtol, sensitivity=sensitivity)
    return GeneralNeuralODE(torch.nn.Identity(), field, torch.nn.Identity(), settings, integral_loss=loss)


_X = torch.tensor([[1.0, 0.2], [0.8, -0.3], [1.3, 0.1]], dtype=torch.float64)


def _objective(model: GeneralNeuralODE) -> torch.Tensor:
    out = model(_X)
    return out.loss_integral + 0.5 * out.y_hat.pow(2).mean()  # integral + terminal term


@pytest.mark.slow
def test_autograd_adjoint_and_finite_differences_agree_including_the_losss_own_parameters():
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        model = _tiny_model(sensitivity)
        _objective(model).backward()
        grads[sensitivity] = {name: p.grad.clone() for name, p in model.named_parameters()}
    names = list(grads["autograd"])
    assert "integral_loss.reference.radius" in names and "integral_loss.reference.phase" in names
    flat = {k: torch.cat([g[n].reshape(-1) for n in names]) for k, g in grads.items()}
    assert (flat["autograd"] - flat["adjoint"]).norm() / flat["autograd"].norm() < 1e-4
    for name in ("integral_loss.reference.radius", "integral_loss.reference.phase"):
        assert grads["adjoint"][name].abs() > 1e-3  # l depends on θ directly: the adjoint must see it

    # central finite differences on a tight forward solve
    model = _tiny_model("autograd", rtol=1e-9)  # measured |FD − exact| ≤ 2e-8 here
    params = dict(model.named_parameters())
    probes = [("integral_loss.reference.radius", ()), ("integral_loss.reference.phase", ()), ("field.layers.0.coeffs", (2, 5)), ("field.layers.1.weight", (0, 1))]
    eps = 1e-4
    for name, idx in probes:
        p = params[name]
        with torch.no_grad():
            p[idx] += eps
            up = float(_objective(model))
            p[idx] -= 2 * eps
            down = float(_objective(model))
            p[idx] += eps
        fd = (up - down) / (2 * eps)
        for sensitivity in ("autograd", "adjoint"):
            g = float(grads[sensitivity][name][idx])
            assert abs(g - fd) <= 1e-6 + 1e-4 * abs(fd), (name, idx, sensitivity, g, fd)


def _tracking_task(**cfg) -> Tracking:
    split = (torch.zeros(1, 2), torch.zeros(1, 2))
    bundle = DataBundle(train=split, val=split, test=split, input_shape=(2,), n_classes=None, target_dim=2)
    return Tracking(OmegaConf.create({"kind": "tracking", **cfg}), bundle)


@pytest.mark.slow
def test_tracking_metrics_on_an_exact_and_a_resting_trajectory():
    task = _tracking_task(eval_horizon=5.0, points_per_unit=100)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # the rotation z' = 2π J z from [1, 0] is exactly γ(s) = [cos 2πs, sin 2πs], forever
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    settings = SolverSettings(method="dopri5", rtol=1e-8, atol=1e-8)
    exact = GeneralNeuralODE(torch.nn.Identity(), _linear_field(2 * math.pi * J), torch.nn.Identity(), settings)
    with torch.no_grad():
        m = task.model_metrics(exact, x, x)
    assert float(m["tracking_mse"]) < 1e-12 and float(m["extrapolation_mse"]) < 1e-12
    # a resting state at [1, 0]: error 1 − cos 2πs; the grid holds 101 points on [0, 1]
    # (cos sums to 1 over them) and 4 whole periods on (1, 5] (cos sums to 0)
    rest = GeneralNeuralODE(torch.nn.Identity(), _linear_field(torch.zeros(2, 2, dtype=torch.float64)), torch.nn.Identity(), settings)
    with torch.no_grad():
        m = task.model_metrics(rest, x, x)
    assert float(m["tracking_mse"]) == pytest.approx(1 - 1 / 101, abs=1e-9)
    assert float(m["extrapolation_mse"]) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize(
    "kind,opts,needle",
    [
        ("tracking", {"coords": [0]}, "model.integral_loss.coords=[0] must list 2 state indices"),
        ("tracking", {"reference": {"kind": "square"}}, "model.integral_loss.reference.kind='square' is unknown"),
        ("tracking", {"reference": {"radius": 1.0, "speed": 2.0}}, "model.integral_loss.reference has an invalid option"),
        ("kinetic", {"scale": 1.0}, "model.integral_loss.scale is not an option here"),
    ],
)
def test_bad_integral_loss_options_raise_config_errors(kind, opts, needle):
    with pytest.raises(ConfigError) as err:
        INTEGRAL_LOSSES.get(kind)(OmegaConf.create({"kind": kind, **opts}), (2,), 1.0)
    assert needle in str(err.value)


def test_unknown_integral_loss_kind_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        INTEGRAL_LOSSES.get("entropy")
    assert "model.integral_loss.kind='entropy'" in str(err.value) and "tracking" in str(err.value)


def test_eval_horizon_must_exceed_the_training_horizon():
    task = _tracking_task(eval_horizon=1.0)
    rest = GeneralNeuralODE(torch.nn.Identity(), _linear_field(torch.zeros(2, 2, dtype=torch.float64)), torch.nn.Identity(), TIGHT)
    with pytest.raises(ConfigError, match="task.eval_horizon=1.0 must exceed"):
        task.model_metrics(rest, torch.zeros(1, 2, dtype=torch.float64), None)


@pytest.mark.slow
def test_a_short_run_logs_both_loss_parts_the_tracking_metrics_and_the_plots(cli, tmp_path):
    run = tmp_path / "run"
    overrides = [
        "train", "experiment=galerkin_tracking", f"hydra.run.dir={run}", "task.terminal_weight=0.5",
        "trainer.max_steps=2", "trainer.log_every=1", "trainer.val_every=2", "trainer.checkpoint_every=2",
        "data.n_train=16", "data.n_val=8", "data.n_test=8", "solver.rtol=1e-4", "solver.atol=1e-4", "task.eval_horizon=2.0",
    ]
    code, _, err = cli(overrides)
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 2
    for r in train:
        assert r["train/loss"] == pytest.approx(0.5 * r["train/loss_terminal"] + r["train/loss_integral"], rel=1e-5)
        assert r["train/loss_terminal"] > 0 and r["train/loss_integral"] > 0
    result = json.loads((run / "result.json").read_text())
    assert {"test/tracking_mse", "test/extrapolation_mse", "test/loss_integral", "test/loss_terminal"} <= set(result["metrics"])
    assert (run / "plots" / "parameters_evolution.png").exists()
    assert (run / "plots" / "tracking.png").exists()
