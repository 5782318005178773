"""Data-controlled Neural ODEs: the control slot, the linear form, parameter counts, the
detach option, combinations with conv/Galerkin fields and augmentation, and bad options."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nodex.errors import ConfigError
from nodex.models import DataSpec, GeneralNeuralODE, build_model, count_parameters
from nodex.models.control import DataControl
from nodex.models.fields import MLPField
from nodex.ode import SolverSettings

TIGHT = SolverSettings(method="dopri5", rtol=1e-8, atol=1e-8)


def _model_cfg(compose_cfg, *overrides: str):
    return compose_cfg(list(overrides)).model


def test_annuli_data_control_has_the_papers_229_parameters(compose_cfg):
    cfg = compose_cfg(["experiment=annuli_data_control"])
    model = build_model(cfg.model, DataSpec((2,), 1), SolverSettings())
    # DataControl-Linear(4,32)-Softplus-Linear(32,2) + Linear(2,1)
    assert count_parameters(model) == (4 * 32 + 32) + (32 * 2 + 2) + (2 + 1) == 229


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, params",
    [("reflection_vanilla", 193), ("reflection_depthcat", 257), ("reflection_data_control", 257), ("reflection_adaptive_depth", 195)],
)
def test_reflection_parameter_counts_match_the_tutorial(compose_cfg, experiment, params):
    cfg = compose_cfg([f"experiment={experiment}"])
    model = build_model(cfg.model, DataSpec((1,), 1), SolverSettings())
    assert count_parameters(model) == params


def test_control_makes_the_field_depend_on_the_input():
    """Same state, different x -> different velocity (a family of fields)."""
    field = MLPField(1, 1, hidden=[8], control_features=1, zero_init_last=False)
    z = torch.zeros(2, 1)
    u = torch.tensor([[-1.0], [1.0]])
    f = field(torch.tensor(0.0), z, u)
    assert (f[0] - f[1]).abs().item() > 1e-4


def _state0_model(detach: bool, const_u: torch.Tensor | None = None) -> GeneralNeuralODE:
    torch.manual_seed(0)
    h_x = nn.Linear(2, 3)
    field = MLPField(3, 3, hidden=[8], control_features=3, zero_init_last=False)
    readout = nn.Linear(3, 1)
    control = DataControl("state0", detach) if const_u is None else (lambda x, z0: const_u)
    return GeneralNeuralODE(h_x, field, readout, SolverSettings(rtol=1e-6, atol=1e-6), control=control)


def _hx_grad(model: GeneralNeuralODE, x: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    model(x).y_hat.pow(2).mean().backward()
    return model.input_layer.weight.grad.clone()


def test_detach_stops_the_gradient_through_the_control():
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    detached = _hx_grad(_state0_model(True), x)
    attached = _hx_grad(_state0_model(False), x)
    # Reference: the control replaced by a constant tensor equal to h_x(x): only the z(0) path.
    const_u = _state0_model(True).input_layer(x).detach()
    constant = _hx_grad(_state0_model(True, const_u=const_u), x)
    torch.testing.assert_close(detached, constant, rtol=1e-6, atol=1e-9)
    assert (attached - detached).abs().max().item() > 1e-3  # the control path carries gradient


def test_source_input_uses_the_raw_input_and_state0_the_initial_state():
    x, z0 = torch.randn(4, 2), torch.randn(4, 5)
    assert DataControl("input")(x, z0) is x
    assert DataControl("state0")(x, z0) is z0
    assert not DataControl("state0", True)(x, z0.requires_grad_()).requires_grad


def test_linear_control_field_matches_the_closed_form(compose_cfg):
    """Paper's linear form in 1-D: dz/ds = a z + c + b x, z(0) = x; closed form at S = 1."""
    cfg = _model_cfg(compose_cfg, "model=data_control", "model.field.kind=linear_control", "model.field.hidden=[]", "model.readout.kind=identity")
    model = build_model(cfg, DataSpec((1,), 1), TIGHT)
    a, c, b = -2.0, 0.3, -3.0
    with torch.no_grad():
        model.field.g.layers[0].weight.fill_(a)
        model.field.g.layers[0].bias.fill_(c)
        model.field.B.weight.fill_(b)
    assert count_parameters(model) == 3
    x = torch.linspace(-1, 1, 7)[:, None]
    expected = math.exp(a) * x + (b * x + c) / a * (math.exp(a) - 1)
    torch.testing.assert_close(model(x).y_hat, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_linear_control_reads_every_mlp_key_through_the_one_mlp_builder(compose_cfg):
    """g is built by the same builder as field.kind=mlp, so out_bias (dropped by the old copy) applies too."""
    base = ["model=data_control", "model.field.kind=linear_control", "model.field.hidden=[4]", "+model.field.out_bias=0.5"]
    model = build_model(_model_cfg(compose_cfg, *base), DataSpec((2,), 2), TIGHT)
    assert torch.equal(model.field.g.layers[-1].bias, torch.full((2,), 0.5))
    with pytest.raises(ConfigError) as err:  # and its errors name the same keys
        build_model(_model_cfg(compose_cfg, *base, "model.field.activation=wobble"), DataSpec((2,), 2), TIGHT)
    assert str(err.value).startswith("model.field.activation='wobble' is unknown; choose one of:")


def test_linear_control_reflects_with_the_propositions_gain():
    """ż = −θ(z + x), z(0) = x gives z(1) = −x + 2x e^{−θ} -> −x as θ grows."""
    g = MLPField(1, 1, hidden=[], bias=False, zero_init_last=False)
    from nodex.models.control import LinearControlField

    field = LinearControlField(g, 1, 1)
    theta = 8.0
    with torch.no_grad():
        g.layers[0].weight.fill_(-theta)
        field.B.weight.fill_(-theta)
    model = GeneralNeuralODE(nn.Identity(), field, nn.Identity(), TIGHT, control=DataControl("input"))
    x = torch.linspace(-1, 1, 5)[:, None]
    torch.testing.assert_close(model(x).y_hat, -x + 2 * x * math.exp(-theta), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_data_control_with_a_conv_field_adds_input_channels(compose_cfg):
    spec = DataSpec((1, 8, 8), 10)
    plain = build_model(_model_cfg(compose_cfg, "model=node_conv"), spec, SolverSettings())
    cfg = _model_cfg(compose_cfg, "model=node_conv", "+model.control={kind: data, source: input, detach: false}")
    controlled = build_model(cfg, spec, SolverSettings())
    # The first 3x3 conv (no bias) sees one more input channel (48·1·3·3 weights) and the input
    # GroupNorm normalises [z; u] (one more channel: 2 affine parameters).
    assert count_parameters(controlled) - count_parameters(plain) == 48 * 9 + 2
    out = controlled(torch.randn(2, 1, 8, 8))
    assert out.y_hat.shape == (2, 10)


@pytest.mark.slow
def test_data_control_with_augmentation_uses_the_augmented_initial_state(compose_cfg):
    spec = DataSpec((2,), 1)
    base = ["model=data_control", "model.input_layer.kind=zero_augment", "+model.input_layer.n_a=3"]
    from_state = build_model(_model_cfg(compose_cfg, *base, "model.control.source=state0"), spec, SolverSettings())
    from_input = build_model(_model_cfg(compose_cfg, *base, "model.control.source=input"), spec, SolverSettings())
    # state width 5: the first layer sees [z(5), u(5)] vs [z(5), x(2)]
    assert count_parameters(from_state) - count_parameters(from_input) == 3 * 32
    assert from_state(torch.randn(4, 2)).z_S.shape == (4, 5)


@pytest.mark.slow
def test_data_control_with_a_galerkin_field(compose_cfg):
    cfg = _model_cfg(compose_cfg, "model=galnode", "+model.control={kind: data, source: input}")
    plain = build_model(_model_cfg(compose_cfg, "model=galnode"), DataSpec((2,), 2), SolverSettings())
    model = build_model(cfg, DataSpec((2,), 2), SolverSettings())
    assert count_parameters(model) > count_parameters(plain)
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    x, z, s = torch.randn(3, 2), torch.zeros(3, 2), torch.tensor(0.3)
    assert (model.field(s, z, x) - model.field(s, z, x + 1.0)).abs().max().item() > 1e-3
    assert model(x).y_hat.shape == (3, 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["model.control.source=hidden"], "model.control.source='hidden' is unknown; choose one of: input, state0"),
        (["model.control.detach=maybe"], "model.control.detach='maybe' must be true or false"),
        (["model.control.kind=bogus"], "model.control.kind='bogus' is unknown"),
        (["model.control.kind=none", "model.field.kind=linear_control"], "model.field.kind=linear_control needs a control signal"),
        (["model.control.kind=condition"], "model.control.n=None must be the number of conditions"),
        (["+model.field.out_bias=1.0", "model.field.bias=false"], "model.field.out_bias needs a last layer with a bias"),
    ],
)
def test_bad_control_options_name_the_key(compose_cfg, overrides, needle):
    cfg = _model_cfg(compose_cfg, "model=data_control", *overrides)
    with pytest.raises(ConfigError) as exc:
        build_model(cfg, DataSpec((2,), 1), SolverSettings())
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_1d_vanilla_flow_is_monotone_so_it_cannot_reflect():
    """Why reflection_vanilla fails: any 1-D flow map is increasing (trajectories cannot cross)."""
    torch.manual_seed(3)
    field = MLPField(1, 1, hidden=[64], zero_init_last=False)
    for p in field.parameters():
        nn.init.normal_(p, std=0.5)
    model = GeneralNeuralODE(nn.Identity(), field, nn.Identity(), SolverSettings(rtol=1e-6, atol=1e-6))
    x = torch.linspace(-1, 1, 101)[:, None]
    with torch.no_grad():
        y = model(x).y_hat[:, 0]
    assert (y.diff() > 0).all()


@pytest.mark.slow
def test_reflection_data_control_fits_the_reflection(train_run):
    """Paper E2: data control fits φ(x) = −x (test MSE < 1e-3, ~60 steps at the paper's lr)."""
    _, dc, code, err = train_run(
        "experiment=reflection_data_control", "data.n_train=100", "data.n_val=100", "data.n_test=200",
        "trainer.max_steps=100", "trainer.val_every=100", "trainer.checkpoint_every=100", "trainer.log_every=50",
    )
    assert code == 0, err
    assert dc["metrics"]["test/mse"] < 1e-3


def test_modules_raise_value_errors_about_their_own_arguments():
    """Config-free modules name their own argument; only the builders name the config key (tests above)."""
    from nodex.models.integral import CircleReference

    cases = [
        (lambda: DataControl("hidden"), "source='hidden' is unknown; choose one of: input, state0"),
        (lambda: DataControl("input", detach="yes"), "detach='yes' must be true or false"),
        (lambda: MLPField(2, 2, hidden=[4], activation="wobble"), "activation='wobble' is unknown; choose one of: "
         "elu, identity, relu, sigmoid, silu, softplus, tanh"),
        (lambda: MLPField(2, 2, hidden=[4], bias=False, out_bias=1.0),
         "out_bias needs a last layer with a bias: set bias=true and a static or concat last layer"),
        (lambda: CircleReference(period=0.0), "period=0.0 must be positive"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value) == message
