"""Continuous normalizing flows: traces, the change of variables against closed forms, a
normalised density, sampling inverts the flow, autograd vs adjoint, the conditional CNF,
the density task, the 2-D density generators and bad options."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nodex.data import build_data
from nodex.data.densities import checkerboard, conditional_targets, gaussians
from nodex.data.reflection import reflection
from nodex.errors import ConfigError
from nodex.models import DataSpec, build_model
from nodex.models.cnf import CNF, GaussianPriors, exact_trace, hutchinson_trace
from nodex.models.fields import MLPField
from nodex.ode import SolverSettings
from nodex.train.tasks import build_task

TIGHT = SolverSettings(method="dopri5", rtol=1e-7, atol=1e-7)


def _random_field(d: int = 2, control: int = 0, seed: int = 0) -> MLPField:
    torch.manual_seed(seed)
    field = MLPField(d, d, hidden=[16], activation="tanh", depth="concat", control_features=control, zero_init_last=False)
    for p in field.parameters():
        nn.init.normal_(p, std=0.4)
    return field


def _cnf(field: nn.Module, d: int = 2, settings: SolverSettings = TIGHT, **kw) -> CNF:
    priors = kw.pop("priors", GaussianPriors(torch.zeros(1, d), torch.ones(1)))
    return CNF(field, priors, settings, dim=d, **kw)


def test_exact_trace_equals_the_brute_force_jacobian_trace():
    field = _random_field(3)
    z = torch.randn(5, 3, requires_grad=True)
    s = torch.tensor(0.3)
    tr = exact_trace(field(s, z, None), z, create_graph=False)
    for i in range(5):
        J = torch.autograd.functional.jacobian(lambda v: field(s, v[None], None)[0], z[i].detach())
        torch.testing.assert_close(tr[i], torch.trace(J), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_equals_the_exact_trace_in_expectation(noise):
    field = _random_field(2)
    n = 40_000
    z = torch.tensor([[0.3, -0.7]]).expand(n, 2).clone().requires_grad_(True)
    dz = field(torch.tensor(0.5), z, None)
    exact = exact_trace(dz, z, create_graph=False)[0]
    gen = torch.Generator().manual_seed(0)
    eps = torch.randn(n, 2, generator=gen) if noise == "gaussian" else torch.randint(0, 2, (n, 2), generator=gen).float() * 2 - 1
    est = hutchinson_trace(dz, z, eps, create_graph=False)
    stderr = est.std() / math.sqrt(n)
    assert abs(est.mean() - exact).item() < 4 * stderr.item() + 1e-6
    if noise == "rademacher":  # Rademacher is exact on the diagonal: only off-diagonal terms vary
        assert est.std().item() > 0


def test_identity_flow_log_likelihood_equals_the_prior_exactly():
    field = MLPField(2, 2, hidden=[8], zero_init_last=True)
    priors = GaussianPriors(torch.tensor([[0.5, -1.0]]), torch.tensor([0.7]))
    model = _cnf(field, priors=priors).eval()
    x = torch.randn(9, 2)
    out = model(x)
    expected = torch.distributions.Normal(torch.tensor([0.5, -1.0]), 0.7).log_prob(x).sum(1)
    assert torch.equal(out.z_S, x)
    torch.testing.assert_close(out.y_hat[:, 0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_linear_flow_matches_the_change_of_variables(trace):
    """dz/ds = A z: z(S) = e^{AS} x and log p(x) = log N(e^{AS} x) + S·tr A (exact for any
    noise draw too when A is diagonal)."""
    A = torch.tensor([[-0.5, 0.0], [0.0, 0.8]]) if trace == "hutchinson" else torch.tensor([[-0.5, 0.3], [-0.2, 0.8]])
    field = MLPField(2, 2, hidden=[], bias=False, zero_init_last=False)
    with torch.no_grad():
        field.layers[0].weight.copy_(A)
    S = 1.3
    model = _cnf(field, settings=SolverSettings(rtol=1e-8, atol=1e-8), S=S, trace=trace, eval_trace=trace)
    x = torch.randn(6, 2, dtype=torch.float32)
    out = model(x)
    z_S = x @ torch.linalg.matrix_exp(A * S).T
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z_S).sum(1) + S * torch.trace(A)
    torch.testing.assert_close(out.z_S, z_S, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.y_hat[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_the_learned_density_integrates_to_one():
    model = _cnf(_random_field(2), settings=SolverSettings(rtol=1e-5, atol=1e-5)).eval()
    n, lo, hi = 120, -7.0, 7.0
    g = torch.linspace(lo, hi, n)
    pts = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        p = model.log_prob(pts).exp()
    mass = p.sum().item() * ((hi - lo) / (n - 1)) ** 2
    assert abs(mass - 1.0) < 0.01


def test_sampling_integrates_back_to_the_prior_draw():
    priors = GaussianPriors(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([1.0, 0.5]))
    from nodex.models.control import ConditionControl

    model = _cnf(_random_field(2, control=2), priors=priors, n_conditions=2, control=ConditionControl(2)).eval()
    for k in (0, 1):
        x = model.sample(64, k, generator=torch.Generator().manual_seed(5))
        z_draw = priors.sample(64, k, torch.Generator().manual_seed(5))
        with torch.no_grad():
            out = model(model.with_condition(x, k))
        torch.testing.assert_close(out.z_S, z_draw, rtol=1e-4, atol=1e-4)
    # the two conditions give different samples from the same prior noise (the control acts)
    x0 = model.sample(16, 0, generator=torch.Generator().manual_seed(1))
    x1 = model.sample(16, 1, generator=torch.Generator().manual_seed(1))
    assert (x0 - x1).abs().mean().item() > 0.1


def test_cnf_gradients_agree_between_autograd_and_adjoint():
    def grads(sensitivity: str) -> list[torch.Tensor]:
        field = _random_field(2, seed=3)
        model = _cnf(field, settings=SolverSettings(rtol=1e-7, atol=1e-7, sensitivity=sensitivity))
        x = torch.randn(8, 2, generator=torch.Generator().manual_seed(4))
        (-model(x).y_hat.mean()).backward()
        return [p.grad.clone() for p in field.parameters()]

    for a, b in zip(grads("autograd"), grads("adjoint")):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_nfe_is_counted_and_hutchinson_is_used_in_training_only():
    model = _cnf(_random_field(2), settings=SolverSettings(rtol=1e-4, atol=1e-4), trace="hutchinson", eval_trace="exact")
    x = torch.randn(32, 2)
    model.train()
    a, b = model(x).y_hat, model(x).y_hat
    assert not torch.allclose(a, b)  # fresh noise per forward pass
    assert model.nfe.count > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).y_hat, model(x).y_hat)


def test_density_task_reports_nll_and_bits_per_dim(compose_cfg):
    cfg = compose_cfg(["model=cnf", "task=density", "data=gaussians", "data.n_train=64", "data.n_val=64", "data.n_test=64"])
    data = build_data(cfg.data, 0)
    task = build_task(cfg.task, data)
    model = build_model(cfg.model, DataSpec(data.input_shape, task.n_outputs), SolverSettings())
    X, y = data.test
    out = model.eval()(X)
    loss, parts = task.loss(out, y)
    m = task.metrics(out, y)
    torch.testing.assert_close(m["nll"], loss)
    torch.testing.assert_close(m["bits_per_dim"], m["nll"] / (2 * math.log(2)))
    # identity flow at init: the NLL is the standard normal's on the data
    torch.testing.assert_close(loss, -torch.distributions.Normal(0.0, 1.0).log_prob(X).sum(1).mean(), rtol=1e-5, atol=1e-5)
    assert task.monitor == "nll" and task.monitor_mode == "min"


def test_conditional_cnf_scores_each_sample_under_its_own_prior(compose_cfg):
    cfg = compose_cfg(["model=cnf_data_control", "task=density", "data=two_targets"]).model
    model = build_model(cfg, DataSpec((3,), 1), SolverSettings()).eval()
    assert model.control is not None and model.n_conditions == 2
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    logp = model(x).y_hat[:, 0]  # identity flow: N((∓1, 0), I) at the origin
    expected = torch.full((2,), -0.5 - math.log(2 * math.pi))
    torch.testing.assert_close(logp, expected, rtol=0, atol=1e-6)


def test_gaussians_are_standardised_and_sit_on_their_modes():
    X, y = gaussians(20_000, torch.Generator().manual_seed(0), modes=6, radius=4.0, std=0.5)
    assert X.shape == (20_000, 2) and (y == 0).all()
    torch.testing.assert_close(X.std(0), torch.ones(2), rtol=0.03, atol=0.0)
    r = X.norm(dim=1) * math.sqrt(8.25)
    assert abs(r.median().item() - 4.0) < 0.1


def test_checkerboard_fills_only_the_black_squares():
    X, _ = checkerboard(5000, torch.Generator().manual_seed(0))
    assert X.abs().max().item() <= 2.0
    parity = (torch.floor(X[:, 0]) + torch.floor(X[:, 1])) % 2
    assert (parity == 0).all() or (parity == 1).all()
    cells = set(map(tuple, torch.floor(X).long().tolist()))
    assert len(cells) == 8


def test_conditional_targets_carry_the_condition_column():
    X, y = conditional_targets(1000, torch.Generator().manual_seed(0), targets=["gaussians", "checkerboard"])
    assert X.shape == (1000, 3)
    torch.testing.assert_close(X[:, 2], y.float())
    assert (y == 0).sum().item() == 500
    assert X[y == 1, :2].abs().max().item() <= 2.0


def test_reflection_data_is_the_negated_grid():
    X, y = reflection(100, torch.Generator().manual_seed(0))
    torch.testing.assert_close(X[:, 0], torch.linspace(-1, 1, 100))
    torch.testing.assert_close(y, -X)


@pytest.mark.parametrize(
    "name, width", [("gaussians", 2), ("moons_density", 2), ("spirals_density", 2), ("checkerboard", 2), ("two_targets", 3), ("reflection", 1)]
)
def test_data_configs_build_order_one_data(compose_cfg, name, width):
    cfg = compose_cfg([f"data={name}", "data.n_train=400", "data.n_val=40", "data.n_test=40"])
    data = build_data(cfg.data, 0)
    X, y = data.train
    assert X.shape == (400, width) and torch.isfinite(X).all()
    assert 0.3 < X[:, :2].std().item() < 2.0 and X[:, :2].abs().max().item() < 5.0
    if data.sampler is not None:  # fresh batches differ from the stored split
        assert not torch.equal(data.sampler(400)[0], X)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.trace=lanczos"], "model.trace='lanczos' is unknown; choose one of: exact, hutchinson"),
        (["model.noise=uniform"], "model.noise='uniform' is unknown; choose one of: rademacher, gaussian"),
        (["model.control.kind=data"], "model.control.kind='data' cannot steer a CNF"),
        (["model.control.kind=condition"], "model.control.kind=condition needs model.conditions > 0"),
        (["model.prior.means=[[0,0,0]]"], "model.prior.means=[[0, 0, 0]] must be a list of 2-D points"),
        (["model.conditions=2", "model.prior.means=[[0,0],[1,1],[2,2]]"], "model.prior has 3 means and 2 stds but the model has 2 condition(s)"),
        (["model.prior.stds=[-1.0]"], "model.prior.stds=[-1.0] must be positive"),
    ],
)
def test_bad_cnf_options_name_the_key(compose_cfg, overrides, needle):
    cfg = compose_cfg(["model=cnf", "task=density", *overrides]).model
    shape = (3,) if any("conditions=2" in o for o in overrides) else (2,)
    with pytest.raises(ConfigError) as exc:
        build_model(cfg, DataSpec(shape, 1), SolverSettings())
    assert needle in str(exc.value)


def test_cnf_with_a_classification_task_says_use_density(compose_cfg):
    cfg = compose_cfg(["model=cnf"]).model
    with pytest.raises(ConfigError, match="use task=density"):
        build_model(cfg, DataSpec((2,), 2), SolverSettings())


@pytest.mark.slow
def test_cnf_training_lowers_the_test_nll(train_run):
    """A short CNF run on one shifted Gaussian N((2, 0), 0.5² I): the test NLL falls from the
    identity flow's ≈ 4.09 nats towards the target's entropy log(2πe·0.25) ≈ 1.45."""
    _, res, code, err = train_run(
        "experiment=cnf_gaussians", "data.params.modes=1", "data.params.radius=2.0", "data.params.standardize=false",
        "data.n_train=128", "data.n_val=128", "data.n_test=256", "model.field.hidden=[32,32]",
        "trainer.max_steps=25", "trainer.batch_size=128", "trainer.optim.lr=0.02", "trainer.val_every=25", "trainer.checkpoint_every=25", "trainer.log_every=5",
    )
    assert code == 0, err
    assert 1.4 < res["metrics"]["test/nll"] < 2.3  # measured 1.64


@pytest.mark.slow
def test_cnf_plots_one_figure_per_condition(compose_cfg, tmp_path):
    from nodex.train.logs import RunLogger
    from nodex.viz import diagnostics

    cfg = compose_cfg(["model=cnf_data_control", "task=density", "data=two_targets", "data.n_test=200", "data.n_train=8", "data.n_val=8"])
    data = build_data(cfg.data, 0)
    task = build_task(cfg.task, data)
    model = build_model(cfg.model, DataSpec(data.input_shape, 1), SolverSettings(rtol=1e-3, atol=1e-3))
    logger = RunLogger(tmp_path, tensorboard=False)
    diagnostics(model, data, task, logger, 0)
    logger.close()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["cnf_condition_0.png", "cnf_condition_1.png", "cnf_samples.png"]
