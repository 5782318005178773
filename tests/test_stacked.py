"""Stacked Neural ODEs: the piece picked at s, breakpoints handed to the solver, options."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from nodex.models import DataSpec, GeneralNeuralODE, build_model, count_parameters
from nodex.models.fields import MLPField
from nodex.models.stacked import StackedLinear, stacked_boundaries
from nodex.ode import SolverSettings


def test_the_layer_uses_the_piece_that_holds_s():
    torch.manual_seed(0)
    layer = StackedLinear(3, 4, [0.25, 0.5, 0.75])
    h = torch.randn(5, 3)
    cases = {0.0: 0, 0.1: 0, 0.2499: 0, 0.25: 1, 0.49: 1, 0.5: 2, 0.74: 2, 0.75: 3, 1.0: 3, 2.5: 3, -0.1: 0}
    for s, piece in cases.items():
        assert int(layer.piece(torch.tensor(s))) == piece, s
        th = layer.coeffs[piece]
        expected = F.linear(h, th[:12].view(4, 3), th[12:])
        assert torch.equal(layer(torch.tensor(s), h), expected), s
    # per-sample depths pick per-sample pieces
    s = torch.tensor([0.1, 0.3, 0.6, 0.9, 0.3])
    rows = torch.stack([layer(s[i], h[i : i + 1])[0] for i in range(5)])
    assert torch.allclose(layer(s, h), rows, atol=1e-6)


def test_pieces_are_independent_and_counted():
    layer = StackedLinear(16, 16, stacked_boundaries({"pieces": 10}, 1.0))
    assert layer.pieces == 10 and count_parameters(layer) == 10 * 17 * 16
    assert not torch.allclose(layer.coeffs[0], layer.coeffs[1])  # each piece initialised on its own
    assert layer.breakpoints == pytest.approx([0.1 * i for i in range(1, 10)])


def test_the_model_hands_the_breakpoints_to_the_solver(compose_cfg):
    cfg = compose_cfg(["model=stacked", "model.field.depth_options.pieces=4", "model.horizon.S=2.0"])
    model = build_model(cfg.model, DataSpec((2,), 2), SolverSettings())  # S = 2 from model.horizon.S
    assert model.jump_t.tolist() == pytest.approx([0.5, 1.0, 1.5])


def _piecewise_constant_model(jump_t: bool, p: int = 5) -> tuple[GeneralNeuralODE, torch.Tensor]:
    # f(s, z) = b_{piece(s)}: one stacked layer with zero weights, so z(S) = z0 + Σ b_i Δs_i exactly.
    torch.manual_seed(0)
    field = MLPField(2, 2, hidden=[], depth="stacked", depth_options={"pieces": p}, zero_init_last=False).double()
    layer = field.layers[0]
    with torch.no_grad():
        layer.coeffs[:, :4] = 0.0
        layer.coeffs[:, 4:] = 10.0 * torch.randn(p, 2, dtype=torch.float64)
    bounds = list(layer.breakpoints) if jump_t else None
    model = GeneralNeuralODE(torch.nn.Identity(), field, torch.nn.Identity(), SolverSettings(rtol=1e-7, atol=1e-7), jump_t=bounds)
    exact = layer.coeffs[:, 4:].sum(0).detach() / p
    return model, exact


def test_with_breakpoints_the_adaptive_solver_steps_onto_each_jump():
    model, exact = _piecewise_constant_model(jump_t=True)
    depths = []
    original = model.field.forward

    def spy(s, z, u=None):
        depths.append(float(s.detach()))
        return original(s, z, u)

    model.field.forward = spy
    z0 = torch.zeros(3, 2, dtype=torch.float64)
    z_S = model(z0).z_S
    assert torch.allclose(z_S, exact.expand(3, 2), atol=1e-9)
    for b in (0.2, 0.4, 0.6, 0.8):  # evaluated just left and just right of every breakpoint
        assert any(b - 1e-12 < d < b for d in depths) and any(b < d < b + 1e-12 for d in depths), b
    # blind stepping over the jumps is less accurate at the same tolerance
    blind, _ = _piecewise_constant_model(jump_t=False)
    assert (blind(z0).z_S - exact).abs().max() > 100 * (z_S - exact).abs().max()


def test_adjoint_and_autograd_gradients_agree_and_the_backward_solve_restarts_at_the_jumps():
    grads, nfe = {}, {}
    for sensitivity in ("autograd", "adjoint"):
        torch.manual_seed(0)
        field = MLPField(2, 2, hidden=[6], depth="stacked", depth_options={"pieces": 3}, zero_init_last=False).double()
        settings = SolverSettings(rtol=1e-7, atol=1e-7, sensitivity=sensitivity)
        model = GeneralNeuralODE(torch.nn.Identity(), field, torch.nn.Linear(2, 1).double(), settings, jump_t=[1 / 3, 2 / 3])
        x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        out = model(x)
        nfe_forward = model.nfe.count
        out.y_hat.pow(2).sum().backward()
        nfe[sensitivity] = (nfe_forward, model.nfe.count - nfe_forward)
        grads[sensitivity] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    a, b = grads["autograd"], grads["adjoint"]
    assert (a - b).norm() / a.norm() < 1e-5
    # with jump_t in the backward solve too, the adjoint costs about what the forward does
    # (measured 34 vs 28 at tol 1e-6; stepping blindly over the jumps took 386)
    forward, backward = nfe["adjoint"]
    assert backward < 2 * forward, nfe


def test_custom_boundaries():
    assert stacked_boundaries({"boundaries": [0.2, 0.7]}, 1.0) == [0.2, 0.7]
    assert stacked_boundaries({"boundaries": [0.2, 0.7], "pieces": 3}, 1.0) == [0.2, 0.7]
    assert stacked_boundaries({"pieces": 1}, 1.0) == []


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"boundaries": [0.5, 0.2]}, "strictly increasing inside (0, S=1.0)"),
        ({"boundaries": [0.5, 1.5]}, "strictly increasing inside (0, S=1.0)"),
        ({"boundaries": [0.5], "pieces": 4}, "depth_options.pieces=4 disagrees"),
        ({"pieces": 0}, "depth_options.pieces=0 must be a positive integer"),
        ({"widths": [0.5]}, "depth_options.widths is not a stacked option"),
    ],
)
def test_bad_options_raise_value_errors_about_the_layer_argument(options, needle):
    with pytest.raises(ValueError) as err:
        stacked_boundaries(options, 1.0)
    assert needle in str(err.value)


@pytest.mark.slow
def test_stacked_conv_field_uses_the_piece_of_s_and_hands_breakpoints_to_the_solver(compose_cfg):
    import torch as _torch

    from nodex.models import DataSpec, build_model
    from nodex.models.stacked import StackedConv2d
    from nodex.ode import SolverSettings

    cfg = compose_cfg(["model=ilnode", "model.input_layer.width=4", "model.field.in_channels=4", "model.field.hidden=[4]",
                       "model.field.depth=stacked", "+model.field.depth_options={pieces: 4}"])
    model = build_model(cfg.model, DataSpec((1, 6, 6), 10), SolverSettings())
    assert model.jump_t.tolist() == [0.25, 0.5, 0.75]
    layer = next(m for m in model.field.modules() if isinstance(m, StackedConv2d))
    h = _torch.randn(2, layer.in_channels, 6, 6)
    for s, piece in ((0.1, 0), (0.3, 1), (0.6, 2), (0.9, 3)):
        th = layer.coeffs[piece]
        n_w = layer.out_channels * layer.in_channels * layer.kernel_size**2
        W = th[:n_w].view(layer.out_channels, layer.in_channels, layer.kernel_size, layer.kernel_size)
        ref = _torch.nn.functional.conv2d(h, W, th[n_w:] if layer.has_bias else None, padding=layer.kernel_size // 2)
        assert _torch.allclose(layer(_torch.tensor(s), h), ref, atol=1e-6)
    per_sample = layer(_torch.tensor([0.1, 0.9]), h)  # per-sample depths pick per-sample pieces
    assert _torch.allclose(per_sample[1], layer(_torch.tensor(0.9), h)[1], atol=1e-5)
    out = model(_torch.randn(3, 1, 6, 6))
    out.y_hat.sum().backward()
    assert layer.coeffs.grad is not None and layer.coeffs.grad.abs().sum() > 0


def _stacked_model(settings: SolverSettings, seed: int = 0) -> GeneralNeuralODE:
    """A stacked MLP field (3 pieces, breakpoints at 1/3 and 2/3) with a linear readout, in float64."""
    torch.manual_seed(seed)
    field = MLPField(2, 2, hidden=[6], depth="stacked", depth_options={"pieces": 3}, zero_init_last=False).double()
    readout = torch.nn.Linear(2, 1).double()
    return GeneralNeuralODE(torch.nn.Identity(), field, readout, settings, jump_t=list(field.layers[0].breakpoints))


def _state_and_grad(model: GeneralNeuralODE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    out = model(x)
    out.y_hat.pow(2).sum().backward()
    return out.z_S.detach(), torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("method,order", [("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_fixed_step_methods_keep_their_order_on_a_stacked_model(method, order, sensitivity):
    """The model hands its breakpoints to the fixed grid too: states and gradients converge at the
    method's order towards a tight dopri5 (which restarts at the jumps)."""
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z_ref, g_ref = _state_and_grad(_stacked_model(SolverSettings(rtol=1e-12, atol=1e-12)), x)
    z_err, g_err = [], []
    for h in (1 / 12, 1 / 24, 1 / 48):  # each piece (1/3) is 4, 8, 16 steps
        z, g = _state_and_grad(_stacked_model(SolverSettings(method=method, step_size=h, sensitivity=sensitivity)), x)
        z_err.append(float((z - z_ref).abs().max()))
        g_err.append(float((g - g_ref).abs().max()))
    for errors in (z_err, g_err):
        orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
        assert all(abs(p - order) < 0.35 for p in orders), (errors, orders)


def test_a_seed_ensemble_of_stacked_models_honours_the_breakpoints_on_a_fixed_grid():
    """Every member of the ensemble gets the state it gets alone on the breakpoint-aware grid."""
    from nodex.models.ensemble import EnsembleNeuralODE

    settings = SolverSettings(method="rk4", step_size=1 / 12)
    members = [_stacked_model(settings, seed=k) for k in range(3)]
    X = torch.randn(3, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = EnsembleNeuralODE(members).double()(X)
    for k, member in enumerate(members):
        alone = member(X[k]).z_S
        assert torch.allclose(out.z_S[k], alone, atol=1e-12, rtol=0)
        member.jump_t = None  # blind to the breakpoints: visibly different
        assert (member(X[k]).z_S - alone).abs().max() > 1e-4
