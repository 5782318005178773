"""Galërkin layers (GalLinear, GalConv2d): equivalence to plain layers, bases, θ(s) built once
per call, parameter counts, rk4's order on a depth-varying field, adjoint gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import chebyshev, legendre

from nodex.errors import ConfigError
from nodex.models import DataSpec, GeneralNeuralODE, build_model, count_parameters
from nodex.models.fields import MLPField
from nodex.models.galerkin import DepthBasis, GalConv2d, GalerkinSpec, GalLinear
from nodex.ode import SolverSettings, odesolve


def _gal_field(basis="fourier", m=5, **spec):
    opts = {"basis": basis, "m": m, "init": "normal", "init_std": 0.5, **spec}
    return MLPField(2, 2, hidden=[8, 8], depth="galerkin", depth_options=opts, zero_init_last=False)


@pytest.mark.parametrize("basis", ["fourier", "legendre", "chebyshev"])
def test_single_constant_term_equals_the_plain_field_exactly(basis):
    torch.manual_seed(0)
    plain = MLPField(2, 2, hidden=[16, 16], depth="none", zero_init_last=False)
    gal = MLPField(2, 2, hidden=[16, 16], depth="galerkin", depth_options={"basis": basis, "m": 1, "init": "zero"}, zero_init_last=False)
    with torch.no_grad():
        for p_layer, g_layer in zip(plain.layers, gal.layers):
            g_layer.coeffs[0] = torch.cat([p_layer.weight.reshape(-1), p_layer.bias])
    z = torch.randn(32, 2)
    for s in (0.0, 0.37, 1.0, 3.2):
        assert torch.equal(gal(torch.tensor(s), z), plain(torch.tensor(s), z))
    # and so do whole solves
    settings = SolverSettings(method="dopri5", rtol=1e-6, atol=1e-6)
    span = torch.tensor([0.0, 1.0])
    a = odesolve(lambda s, z: gal(s, z), z, span, settings)
    b = odesolve(lambda s, z: plain(s, z), z, span, settings)
    assert torch.equal(a, b)


def test_fourier_basis_uses_integer_harmonics_over_the_period():
    basis = DepthBasis(GalerkinSpec(basis="fourier", m=5, period=2.0))
    s = 0.3
    w = 2 * math.pi / 2.0
    expected = [1.0, math.cos(w * s), math.sin(w * s), math.cos(2 * w * s), math.sin(2 * w * s)]
    assert torch.allclose(basis(torch.tensor(s)), torch.tensor(expected), atol=1e-6)
    # periodic in s with period T: extrapolation beyond [0, T] repeats θ
    assert torch.allclose(basis(torch.tensor(s + 2.0)), basis(torch.tensor(s)), atol=1e-5)


@pytest.mark.parametrize("kind,ref", [("legendre", legendre.legval), ("chebyshev", chebyshev.chebval)])
def test_polynomial_bases_match_numpy_on_the_rescaled_depth(kind, ref):
    m = 7
    basis = DepthBasis(GalerkinSpec(basis=kind, m=m, period=1.0)).double()
    for s in (0.0, 0.2, 0.5, 0.9, 1.0, 1.6):  # 1.6 is outside [0, T]: polynomials stay defined
        x = 2 * s - 1
        expected = np.array([ref(x, [0] * j + [1]) for j in range(m)])
        assert np.allclose(basis(torch.tensor(s, dtype=torch.float64)).numpy(), expected, atol=1e-10)


def test_learnable_dilation_and_shift_rescale_the_depth():
    basis = DepthBasis(GalerkinSpec(basis="fourier", m=3, period=1.0, dilation=True, shift=True))
    with torch.no_grad():
        basis.dilation.fill_(2.0)
        basis.shift.fill_(0.1)
    plain = DepthBasis(GalerkinSpec(basis="fourier", m=3, period=1.0))
    assert torch.allclose(basis(torch.tensor(0.3)), plain(torch.tensor(0.7)), atol=1e-6)


def test_theta_is_built_once_per_field_call_not_per_sample(monkeypatch):
    torch.manual_seed(0)
    field = _gal_field()
    calls = []
    original = GalLinear.theta

    def counting(self, s):
        out = original(self, s)
        calls.append(tuple(out.shape))
        return out

    monkeypatch.setattr(GalLinear, "theta", counting)
    field(torch.tensor(0.4), torch.randn(256, 2))
    n_gal = sum(isinstance(m, GalLinear) for m in field.modules())
    assert n_gal == 3
    assert len(calls) == n_gal  # one θ(s) per layer per call, whatever the batch
    assert all(len(shape) == 1 for shape in calls)  # (n_params,): shared by the batch


def test_per_sample_depths_match_the_shared_depth_path():
    torch.manual_seed(0)
    layer = GalLinear(3, 4, spec=GalerkinSpec(m=5, init="normal"))
    h = torch.randn(6, 3)
    s = torch.linspace(0, 1, 6)
    batched = layer(s, h)
    single = torch.stack([layer(s[i], h[i : i + 1])[0] for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-6)


def test_parameter_counts():
    spec = GalerkinSpec(m=5)
    assert count_parameters(GalLinear(16, 16, spec=spec)) == 5 * 17 * 16
    assert count_parameters(GalLinear(16, 16, bias=False, spec=spec)) == 5 * 16 * 16
    assert count_parameters(GalLinear(16, 16, spec=GalerkinSpec(m=5, dilation=True, shift=True))) == 5 * 17 * 16 + 2
    assert count_parameters(GalConv2d(3, 8, 3, spec=spec)) == 5 * (3 * 9 + 1) * 8


def test_annuli_galnode_layout_and_count(compose_cfg):
    # Linear(2,16)-Tanh-GalLinear(16,16, fourier m=5, dilation+shift)-Tanh-Linear(16,2) + Linear(2,1):
    # 48 + (5·17·16 + 2) + 34 + 3 = 1447 (the paper's torchdyn layer has 10 functions: 2807)
    cfg = compose_cfg(["experiment=annuli_galnode"])
    model = build_model(cfg.model, DataSpec((2,), 1), SolverSettings())
    kinds = [type(layer).__name__ for layer in model.field.layers]
    assert kinds == ["StaticLinear", "GalLinear", "StaticLinear"]
    assert count_parameters(model) == 1447


def test_inits():
    torch.manual_seed(0)
    zero = GalLinear(8, 8, spec=GalerkinSpec(m=4, init="zero"))
    assert not zero.coeffs.any()
    const = GalLinear(8, 8, spec=GalerkinSpec(m=4, init="constant"))
    assert const.coeffs[0].abs().max() <= 1 / math.sqrt(8) + 1e-6 and const.coeffs[0].any() and not const.coeffs[1:].any()
    normal = GalLinear(64, 64, spec=GalerkinSpec(m=4, init="normal", init_std=0.01))
    assert abs(float(normal.coeffs.detach().std()) - 0.01) < 0.001


def test_gal_conv2d_single_term_equals_conv2d_and_per_sample_path_agrees():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    gal = GalConv2d(3, 5, 3, spec=GalerkinSpec(m=1, init="zero"))
    with torch.no_grad():
        gal.coeffs[0] = torch.cat([conv.weight.reshape(-1), conv.bias])
    h = torch.randn(4, 3, 6, 6)
    assert torch.equal(gal(torch.tensor(0.5), h), conv(h))
    rich = GalConv2d(3, 5, 3, spec=GalerkinSpec(m=5, init="normal"))
    s = torch.linspace(0, 1, 4)
    batched = rich(s, h)
    single = torch.cat([rich(s[i], h[i : i + 1]) for i in range(4)])
    assert batched.shape == (4, 5, 6, 6)
    assert torch.allclose(batched, single, atol=1e-5)


def test_rk4_reaches_fourth_order_on_a_depth_varying_field():
    # A stage evaluated at the wrong depth (e.g. s of the step start) drops rk4 to first order
    # on depth-varying fields; halving the step must divide the error by ~2^4 = 16.
    torch.manual_seed(0)
    field = _gal_field(m=5, init_std=0.2).double()
    z0 = torch.randn(16, 2, dtype=torch.float64)
    span = torch.tensor([0.0, 1.0], dtype=torch.float64)
    dyn = lambda s, z: field(s, z)  # noqa: E731
    ref = odesolve(dyn, z0, span, SolverSettings(method="dopri8", rtol=1e-13, atol=1e-13))[-1]
    errors = [(odesolve(dyn, z0, span, SolverSettings(method="rk4", step_size=h))[-1] - ref).abs().max().item() for h in (0.04, 0.02, 0.01)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]  # measured: 19.8, 17.7
    assert all(12.0 < r < 22.0 for r in ratios), (errors, ratios)
    # the field really varies with depth
    assert not torch.allclose(field(torch.tensor(0.0, dtype=torch.float64), z0), field(torch.tensor(0.5, dtype=torch.float64), z0))


def test_adjoint_and_autograd_gradients_agree_for_a_galnode():
    torch.manual_seed(0)
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        torch.manual_seed(1)
        opts = {"basis": "fourier", "m": 3, "init": "normal", "init_std": 0.3, "dilation": True, "shift": True}
        field = MLPField(2, 2, hidden=[6], depth="galerkin", depth_options=opts, zero_init_last=False).double()
        model = GeneralNeuralODE(torch.nn.Identity(), field, torch.nn.Linear(2, 1).double(), SolverSettings(rtol=1e-8, atol=1e-8, sensitivity=sensitivity))
        x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        model(x).y_hat.pow(2).sum().backward()
        grads[sensitivity] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    a, b = grads["autograd"], grads["adjoint"]
    assert (a - b).norm() / a.norm() < 1e-5  # measured 2.5e-6 at tol 1e-8


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"basis": "wavelet"}, "depth_options.basis='wavelet'"),
        ({"m": 0}, "depth_options.m=0"),
        ({"init": "xavier"}, "depth_options.init='xavier'"),
        ({"period": -1.0}, "depth_options.period=-1.0"),
        ({"harmonics": 3}, "depth_options.harmonics is not a galerkin option"),
    ],
)
def test_bad_options_raise_value_errors_about_the_layer_argument(options, needle):
    with pytest.raises(ValueError) as err:
        GalerkinSpec.from_options(options, 1.0)
    assert str(err.value).startswith(needle)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_the_builder_names_the_config_key_of_a_bad_option(compose_cfg, kind):
    preset = {"mlp": ["model=galnode"], "conv": ["model=node_conv", "model.field.depth=galerkin"]}[kind]
    shape = {"mlp": (2,), "conv": (1, 8, 8)}[kind]
    cfg = compose_cfg([*preset, "++model.field.depth_options.m=0"])
    with pytest.raises(ConfigError) as err:
        build_model(cfg.model, DataSpec(shape, 2), SolverSettings())
    assert str(err.value) == "model.field.depth_options.m=0 (number of basis functions) must be a positive integer"


def test_galnode_preset_builds_and_starts_as_the_identity_flow(compose_cfg):
    cfg = compose_cfg(["model=galnode"])
    model = build_model(cfg.model, DataSpec((2,), 2), SolverSettings())
    assert sum(isinstance(m, GalLinear) for m in model.modules()) == 2
    x = torch.randn(5, 2)
    assert model.field(torch.tensor(0.3), x).abs().max() == 0  # zero-init last layer: identity flow
    assert torch.allclose(model(x).z_S, x, atol=1e-5)  # (dopri5's dense output rounds at 1e-6)


def test_full_norm_adjoint_gives_accurate_spectral_gradients_from_a_constant_init():
    # θ(s) constant at init: the forward steps are long, so the quadrature of ∫ aᵀ ∂f/∂θ ψ_j ds
    # on them is coarse; the adjoint with error control on the parameter channels is not.
    def grad(settings):
        torch.manual_seed(0)
        field = MLPField(2, 2, hidden=[8], depth="galerkin", depth_options={"m": 3, "init": "constant"}, zero_init_last=False).double()
        model = GeneralNeuralODE(torch.nn.Identity(), field, torch.nn.Linear(2, 2).double(), settings)
        x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        model(x).y_hat.pow(2).sum().backward()
        return field.layers[0].coeffs.grad[1:]  # the non-constant modes
    truth = grad(SolverSettings(rtol=1e-12, atol=1e-12))
    full = grad(SolverSettings(rtol=1e-5, atol=1e-5, sensitivity="adjoint", seminorm=False))
    # measured at tol 1e-5: full-norm adjoint 0.16%; autograd 580%, seminorm adjoint 400%
    assert (full - truth).norm() / truth.norm() < 1e-2


def test_galerkin_conv_field_builds_trains_and_depends_on_s(compose_cfg, tmp_path):
    import torch as _torch

    from nodex.models import DataSpec, build_model, count_parameters
    from nodex.ode import SolverSettings

    base = ["model=ilnode", "model.input_layer.width=8", "model.field.in_channels=8", "model.field.hidden=[8,8]"]
    settings = SolverSettings(method="rk4", step_size=0.5)
    plain = build_model(compose_cfg(base).model, DataSpec((1, 8, 8), 10), settings)
    gal = compose_cfg([*base, "model.field.depth=galerkin", "+model.field.depth_options={basis: fourier, m: 3, init: normal}"])
    model = build_model(gal.model, DataSpec((1, 8, 8), 10), settings)
    norms = sum(p.numel() for m in plain.field.modules() if isinstance(m, _torch.nn.GroupNorm) for p in m.parameters())
    convs = count_parameters(plain.field) - norms
    assert count_parameters(model.field) == 3 * convs + norms  # m coefficients per conv weight and bias; GroupNorm static
    z = _torch.randn(2, 8, 8, 8)
    f0, f1 = model.field(_torch.tensor(0.0), z, None), model.field(_torch.tensor(0.3), z, None)
    assert f0.shape == z.shape and not _torch.allclose(f0, f1)
    out = model(_torch.randn(4, 1, 8, 8))
    out.y_hat.sum().backward()
    assert all(p.grad is not None for p in model.field.parameters())
