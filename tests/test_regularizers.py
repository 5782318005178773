"""RNODE regularisers (``task.regularizer``): closed-form values, the Hutchinson estimate, gradients under
autograd and the adjoint against finite differences, the CNF's shared noise, refusals and the logged terms."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from nodex.errors import ConfigError
from nodex.models import DataSpec, GeneralNeuralODE, build_model
from nodex.models.cnf import CNF, GaussianPriors
from nodex.models.ensemble.model import EnsembleNeuralODE
from nodex.models.fields import MLPField
from nodex.models.integral import NormLoss
from nodex.models.regularizers import Regularizer, regularizer_from_config
from nodex.ode import SolverSettings

TIGHT = SolverSettings(method="dopri5", rtol=1e-10, atol=1e-10)
Z0 = torch.tensor([[1.0, -2.0], [0.5, 0.3]], dtype=torch.float64)


def _linear_field(W: torch.Tensor) -> MLPField:
    """f(s, z) = W z (one linear layer, no bias), float64."""
    field = MLPField(2, 2, hidden=[], depth="none", bias=False, zero_init_last=False).double()
    with torch.no_grad():
        field.layers[0].weight.copy_(W)
    return field


def _model(field, settings=TIGHT, error_control=True, **weights) -> GeneralNeuralODE:
    return GeneralNeuralODE(torch.nn.Identity(), field, torch.nn.Identity(), settings,
                            regularizer=Regularizer(weights, error_control))


def test_kinetic_term_integrates_to_its_closed_form_and_is_weighted_into_the_penalty():
    lam = -0.7  # z' = λz: ∫_0^1 ‖f‖² = λ² |z0|² (e^{2λ} − 1)/(2λ)
    model = _model(_linear_field(lam * torch.eye(2, dtype=torch.float64)), kinetic=0.5)
    out = model(Z0)
    expected = (lam**2 * Z0.pow(2).sum(1) * (math.exp(2 * lam) - 1) / (2 * lam)).mean()
    assert set(out.regularization) == {"reg_kinetic"}
    assert torch.allclose(out.regularization["reg_kinetic"], expected, rtol=1e-8)
    assert torch.allclose(out.loss_regularizer, 0.5 * expected, rtol=1e-8)
    assert out.loss_integral is None


def test_jacobian_term_uses_one_noise_draw_per_solve_and_estimates_the_frobenius_norm():
    W = torch.tensor([[0.3, -1.2], [0.8, 0.5]], dtype=torch.float64)
    model = _model(_linear_field(W), jacobian=1.0)
    torch.manual_seed(3)
    out = model(Z0)
    torch.manual_seed(3)
    eps = torch.randn_like(Z0)  # the draw the solve made, once: ∫_0^1 ‖εᵀW‖² ds = ‖εᵀW‖²
    assert torch.allclose(out.regularization["reg_jacobian"], (eps @ W).pow(2).sum(1).mean(), rtol=1e-8)
    torch.manual_seed(0)
    with torch.no_grad():  # values only: the terms still take their VJP inside
        many = model(torch.zeros(8000, 2, dtype=torch.float64)).regularization["reg_jacobian"]
    assert float(many) == pytest.approx(float(W.pow(2).sum()), rel=0.04)  # E‖εᵀW‖² = ‖W‖²_F = 2.42


class _SampleDepths(torch.nn.Module):
    """A per-sample horizon S(x): fixed values, signed."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.register_buffer("S", torch.tensor(values, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.S


def test_terms_are_costs_of_the_path_also_where_a_signed_horizon_integrates_backward():
    """dz/ds = a z over [0, S(x)], S(x) < 0 for some samples: ∫ ‖f‖² |ds| = a² x² |e^{2aS} − 1| / (2a) and
    ∫ ‖εᵀ ∂f/∂z‖² |ds| = a² ε² |S| — never negative (a backward flow is no cheaper)."""
    a, S = 0.7, [-1.5, 0.4, 0.8]
    field = MLPField(1, 1, hidden=[], bias=False, zero_init_last=False).double()
    with torch.no_grad():
        field.layers[0].weight.fill_(a)
    model = GeneralNeuralODE(torch.nn.Identity(), field, torch.nn.Identity(), TIGHT, horizon=_SampleDepths(S),
                             regularizer=Regularizer({"kinetic": 1.0, "jacobian": 1.0}))
    x = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    torch.manual_seed(4)
    out = model(x)
    torch.manual_seed(4)
    eps = torch.randn(3, 1, dtype=torch.float64)[:, 0]
    depth = torch.tensor(S, dtype=torch.float64)
    kinetic = a**2 * x[:, 0] ** 2 * (torch.exp(2 * a * depth) - 1).abs() / (2 * a)
    assert torch.allclose(out.regularization["reg_kinetic"], kinetic.mean(), rtol=1e-8)
    assert torch.allclose(out.regularization["reg_jacobian"], (a**2 * eps**2 * depth.abs()).mean(), rtol=1e-8)


def test_terms_are_training_only_and_leave_the_evaluation_solve_alone():
    torch.manual_seed(0)
    field = MLPField(2, 2, hidden=[8], depth="none", zero_init_last=False).double()
    reg = _model(field, SolverSettings(method="dopri5", rtol=1e-6, atol=1e-6), kinetic=1.0, jacobian=1.0)
    plain = GeneralNeuralODE(torch.nn.Identity(), field, torch.nn.Identity(), reg.settings)
    reg.eval()
    plain.eval()
    with torch.no_grad():
        out = reg(Z0)
        nfe = reg.nfe.count
        ref = plain(Z0)
    assert out.loss_regularizer is None and out.regularization == {}
    assert torch.equal(out.z_S, ref.z_S) and nfe == plain.nfe.count


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_without_error_control_the_terms_ride_on_the_evaluation_solves_steps(sensitivity):
    """The terms' integrals are never read by the dynamics: with ``error_control=False`` they are left out of the
    error norm and a training solve takes the steps of the plain solve (NFE equal); controlled, they take more."""
    nfe, kinetic = {}, {}
    for error_control in (True, False):
        torch.manual_seed(1)
        field = MLPField(2, 2, hidden=[8], depth="none", zero_init_last=False).double()
        settings = SolverSettings(method="dopri5", rtol=1e-6, atol=1e-6, sensitivity=sensitivity)
        model = _model(field, settings, error_control, kinetic=1.0, jacobian=1.0)
        X = 3 * torch.randn(16, 2, dtype=torch.float64)
        model.train()
        kinetic[error_control] = float(model(X).regularization["reg_kinetic"].detach())
        nfe[error_control] = model.nfe.count
        model.eval()
        model.nfe.reset()
        with torch.no_grad():
            model(X)
        nfe["plain"] = model.nfe.count
    assert nfe[False] == nfe["plain"] == 20 and nfe[True] == 26
    torch.manual_seed(0)
    reference = float(_model(field, TIGHT, kinetic=1.0, jacobian=1.0)(X).regularization["reg_kinetic"].detach())
    assert kinetic[False] == pytest.approx(reference, rel=1e-5) and kinetic[True] == pytest.approx(reference, rel=1e-5)


def test_terms_combine_with_an_integral_loss_and_the_task_sums_them():
    from nodex.data import DataBundle
    from nodex.train.tasks.supervised import Regression

    lam = -0.4
    model = GeneralNeuralODE(torch.nn.Identity(), _linear_field(lam * torch.eye(2, dtype=torch.float64)), torch.nn.Identity(),
                      TIGHT, integral_loss=NormLoss(2, "field"), regularizer=Regularizer({"kinetic": 0.1}))
    out = model(Z0)
    assert torch.allclose(out.loss_integral, out.regularization["reg_kinetic"], rtol=1e-10)  # the same integral
    split = (torch.zeros(1, 2), torch.zeros(1, 2))
    task = Regression(OmegaConf.create({"kind": "regression"}), DataBundle(split, split, split, (2,), None, 2))
    y = torch.zeros(2, 2, dtype=torch.float64)
    total, parts = task.loss(out, y)
    assert set(parts) == {"loss_terminal", "loss_integral", "reg_kinetic"}
    expected = parts["loss_terminal"] + out.loss_integral + 0.1 * parts["reg_kinetic"]
    assert torch.allclose(total, expected, rtol=1e-12)


def _tiny(sensitivity: str, rtol: float = 1e-7) -> GeneralNeuralODE:
    torch.manual_seed(0)
    field = MLPField(2, 2, hidden=[3], depth="none", zero_init_last=False).double()
    settings = SolverSettings(method="dopri5", rtol=rtol, atol=rtol, sensitivity=sensitivity)
    return _model(field, settings, kinetic=0.7, jacobian=0.4)


_X = torch.tensor([[1.0, 0.2], [0.8, -0.3], [1.3, 0.1]], dtype=torch.float64)


def _objective(model) -> torch.Tensor:
    torch.manual_seed(11)  # the same ε in every solve
    out = model(_X)
    return out.loss_regularizer + 0.5 * out.y_hat.pow(2).mean()


@pytest.mark.slow
def test_autograd_adjoint_and_finite_differences_agree():
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        model = _tiny(sensitivity)
        _objective(model).backward()
        grads[sensitivity] = {name: p.grad.clone() for name, p in model.named_parameters()}
    names = list(grads["autograd"])
    flat = {k: torch.cat([g[n].reshape(-1) for n in names]) for k, g in grads.items()}
    assert (flat["autograd"] - flat["adjoint"]).norm() / flat["autograd"].norm() < 1e-4
    model = _tiny("autograd", rtol=1e-9)
    params = dict(model.named_parameters())
    step = 1e-4
    for name, idx in [("field.layers.0.weight", (1, 0)), ("field.layers.0.bias", (2,)), ("field.layers.1.weight", (0, 1))]:
        p = params[name]
        with torch.no_grad():
            p[idx] += step
            up = float(_objective(model))
            p[idx] -= 2 * step
            down = float(_objective(model))
            p[idx] += step
        fd = (up - down) / (2 * step)
        for sensitivity in ("autograd", "adjoint"):
            g = float(grads[sensitivity][name][idx])
            assert abs(g - fd) <= 1e-6 + 1e-4 * abs(fd), (name, idx, sensitivity, g, fd)


@pytest.mark.parametrize("error_control", [True, False])
def test_a_state_from_a_trained_input_layer_gets_the_same_gradients_under_autograd_and_the_adjoint(error_control):
    """An input layer with parameters (input-layer augmented models) makes the initial state require grad; the
    adjoint's forward solve runs without a graph, where the Jacobian term must still differentiate its field."""
    grads = []
    for sensitivity in ("autograd", "adjoint"):
        torch.manual_seed(0)
        lift = torch.nn.Linear(2, 3).double()
        field = MLPField(3, 3, hidden=[4], depth="none", zero_init_last=False).double()
        settings = SolverSettings(method="dopri5", rtol=1e-8, atol=1e-8, sensitivity=sensitivity)
        model = GeneralNeuralODE(lift, field, torch.nn.Identity(), settings,
                                 regularizer=Regularizer({"kinetic": 0.3, "jacobian": 0.6}, error_control))
        _objective(model).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert grads[0][:9].abs().sum() > 0  # the input layer's weights and bias are trained through the terms
    assert (grads[0] - grads[1]).norm() / grads[0].norm() < 1e-5


def test_a_cnfs_log_density_has_the_same_input_gradient_under_autograd_and_the_adjoint():
    """∇ₓ log p(x) (a score) with the state requiring grad from the start: the adjoint's graph-free forward solve
    differentiates the field for its trace all the same."""
    scores = []
    for sensitivity in ("autograd", "adjoint"):
        cnf = _cnf(sensitivity, "exact", kinetic=0.5, jacobian=0.5)
        torch.manual_seed(2)
        x = _X.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(cnf(x).y_hat.sum(), x)
        scores.append(score)
    assert torch.allclose(scores[0], scores[1], rtol=1e-5, atol=1e-8)


class _Translation(torch.nn.Module):
    """f(s, z) = v: a field that never reads the state (its Jacobian is zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.v = torch.nn.Parameter(torch.tensor([0.5, -1.0], dtype=torch.float64))

    def forward(self, s, z, u=None):
        return self.v.expand_as(z)


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_a_field_that_never_reads_the_state_has_a_zero_jacobian_term_and_trace(sensitivity):
    settings = SolverSettings(method="dopri5", rtol=1e-8, atol=1e-8, sensitivity=sensitivity)
    model = GeneralNeuralODE(torch.nn.Identity(), _Translation(), torch.nn.Identity(), settings,
                             regularizer=Regularizer({"kinetic": 1.0, "jacobian": 1.0}))
    out = model(_X)
    assert float(out.regularization["reg_jacobian"].detach()) == 0.0
    assert torch.allclose(out.regularization["reg_kinetic"], torch.tensor(1.25, dtype=torch.float64), rtol=1e-10)
    out.loss_regularizer.backward()  # d/dv ∫ ‖v‖² ds = 2v
    assert torch.allclose(model.field.v.grad, 2 * model.field.v.detach(), rtol=1e-8)
    priors = GaussianPriors(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    for trace in ("exact", "hutchinson"):
        cnf = CNF(_Translation(), priors, settings, dim=2, trace=trace, regularizer=Regularizer({"jacobian": 1.0}))
        out = cnf(_X)  # a translation keeps volumes: log p(x) = log q(x + v)
        expected = cnf.priors.log_prob(_X + cnf.field.v.detach(), torch.zeros(3, dtype=torch.long))
        assert torch.allclose(out.y_hat[:, 0], expected, rtol=1e-7) and float(out.regularization["reg_jacobian"].detach()) == 0


def _cnf(sensitivity: str, trace: str, **weights) -> CNF:
    torch.manual_seed(0)
    field = MLPField(2, 2, hidden=[4], depth="none", zero_init_last=False).double()
    priors = GaussianPriors(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    settings = SolverSettings(method="dopri5", rtol=1e-7, atol=1e-7, sensitivity=sensitivity)
    return CNF(field, priors, settings, dim=2, trace=trace, regularizer=Regularizer(weights))


def test_cnf_jacobian_term_reuses_the_trace_noise():
    W = torch.tensor([[0.3, -1.2], [0.8, 0.5]], dtype=torch.float64)
    priors = GaussianPriors(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    cnf = CNF(_linear_field(W), priors, TIGHT, dim=2, trace="hutchinson", regularizer=Regularizer({"jacobian": 1.0}))
    torch.manual_seed(5)
    out = cnf(Z0)
    torch.manual_seed(5)
    eps = torch.randint(0, 2, Z0.shape).to(Z0.dtype) * 2 - 1  # the trace's Rademacher draw, the only one
    assert torch.allclose(out.regularization["reg_jacobian"], (eps @ W).pow(2).sum(1).mean(), rtol=1e-8)
    # and the trace used it too: log p = log q(z(1)) + ∫ εᵀWε = ... with Δ(1) = −εᵀWε
    trace = ((eps @ W) * eps).sum(1)
    logq = cnf.priors.log_prob(out.z_S, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(out.y_hat[:, 0], logq + trace, rtol=1e-8)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_cnf_regularised_gradients_agree_under_autograd_and_the_adjoint(trace):
    grads = []
    for sensitivity in ("autograd", "adjoint"):
        cnf = _cnf(sensitivity, trace, kinetic=0.5, jacobian=0.5)
        torch.manual_seed(2)
        out = cnf(_X)
        (out.loss_regularizer - out.y_hat.mean()).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in cnf.parameters()]))
    assert (grads[0] - grads[1]).norm() / grads[0].norm() < 1e-4


def test_cnf_terms_without_error_control_ride_on_the_steps_of_its_state_and_log_density():
    nfe = []
    for weights in (None, {"kinetic": 1.0, "jacobian": 1.0}):
        cnf = _cnf("autograd", "exact", **(weights or {}))
        cnf.regularizer = weights and Regularizer(weights, error_control=False)
        cnf.settings = SolverSettings(method="dopri5", rtol=1e-4, atol=1e-4)
        torch.manual_seed(2)
        out = cnf(10 * _X)  # with the terms under error control (the default): 20 evaluations, not 14
        nfe.append(cnf.nfe.count)
    assert out.regularization and nfe[0] == nfe[1]


_MODEL = {"input_layer": {"kind": "identity"}, "field": {"kind": "mlp", "hidden": [4], "activation": "tanh"},
          "readout": {"kind": "linear"}, "horizon": {"kind": "fixed", "S": 1.0}}


@pytest.mark.parametrize(
    "reg,model,message",
    [
        ({"kinetic": -1}, {}, "task.regularizer.kinetic=-1 must be >= 0"),
        ({"jacobian": -0.5}, {}, "task.regularizer.jacobian=-0.5 must be >= 0"),
        ({"kinetic": "a"}, {}, "task.regularizer.kinetic='a' must be a number >= 0 (0: off)"),
        ({"kinetic": math.inf}, {}, "task.regularizer.kinetic=inf must be a finite number >= 0 (0: off)"),
        ({"jacobian": math.nan}, {}, "task.regularizer.jacobian=nan must be a finite number >= 0 (0: off)"),
        ({"entropy": 1.0}, {}, "task.regularizer.entropy is not a regulariser; valid: kinetic, jacobian"),
        ({"kinetic": 0.01, "error_control": "no"}, {}, "task.regularizer.error_control='no' must be true or false"),
        ({"kinetic": 0.01}, {"order": 2}, "task.regularizer.kinetic=0.01 needs a first-order field, but model.order=2"),
    ],
)
def test_bad_regulariser_settings_are_refused_in_one_line(reg, model, message):
    cfg = OmegaConf.create({**_MODEL, **model})
    with pytest.raises(ConfigError) as err:
        build_model(cfg, DataSpec((2,), 2), SolverSettings(), OmegaConf.create(reg))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_zero_weights_build_the_plain_model_and_an_ensemble_refuses_the_terms():
    assert regularizer_from_config(OmegaConf.create({"kinetic": 0.0, "jacobian": 0.0}), OmegaConf.create(_MODEL)) is None
    cfg = OmegaConf.create(_MODEL)
    models = [build_model(cfg, DataSpec((2,), 2), SolverSettings(), OmegaConf.create({"kinetic": 0.01})) for _ in "ab"]
    assert models[0].regularizer.weights == {"kinetic": 0.01} and models[0].regularizer.error_control
    free = regularizer_from_config(OmegaConf.create({"kinetic": 0.01, "error_control": False}), cfg)
    assert free.weights == {"kinetic": 0.01} and free.quadratures == 1 and models[0].regularizer.quadratures == 0
    with pytest.raises(ConfigError, match=r"task.regularizer and model.horizon.steer need trainer.ensemble=1"):
        EnsembleNeuralODE(models)


@pytest.mark.parametrize("settings,refused", [
    (SolverSettings(method="bosh3"), True),
    (SolverSettings(method="dopri5", engine="torchdiffeq"), True),
    (SolverSettings(method="tsit5"), False),
    (SolverSettings(method="rk4", step_size=0.1), False),  # no step control to leave them out of
])
def test_terms_without_error_control_need_nodexs_adaptive_engine(settings, refused):
    reg = OmegaConf.create({"kinetic": 0.01, "error_control": False})
    build = lambda: build_model(OmegaConf.create(_MODEL), DataSpec((2,), 2), settings, reg)  # noqa: E731
    if not refused:
        assert build().regularizer.quadratures == 1
        return
    with pytest.raises(ConfigError, match=r"^task.regularizer.error_control=false needs nodex's adaptive engine, not "
                                          r".* on torchdiffeq's \(which controls every part\): set solver=dopri5"):
        build()


@pytest.mark.slow
def test_a_regularised_run_logs_both_terms_and_adds_them_to_the_loss(train_run):
    from tests.conftest import read_scalars

    run_dir, result, code, err = train_run("task.regularizer.kinetic=0.01", "task.regularizer.jacobian=0.02",
                                           "trainer.max_steps=10", "logger.tensorboard=true")
    assert code == 0, err
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 2
    for r in train:
        penalty = 0.01 * r["train/reg_kinetic"] + 0.02 * r["train/reg_jacobian"]
        assert r["train/loss"] == pytest.approx(r["train/loss_terminal"] + penalty, rel=1e-5)
        assert r["train/reg_kinetic"] > 0 and r["train/reg_jacobian"] > 0
    assert not any(k.startswith(("val/reg", "test/reg")) for r in rows for k in r)  # training-only terms
    scalars = read_scalars(run_dir)
    assert {"train/reg_kinetic", "train/reg_jacobian"} <= set(scalars)
    assert result["status"] == "completed"
