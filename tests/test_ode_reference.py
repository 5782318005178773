"""Reference problems for nodex's own ODE engine (:mod:`nodex.ode.lean`): exact values, orders,
gradients against autograd and finite differences, degenerate fields, tuple states, ``jump_t``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nodex.ode import NFECounter, SolverSettings, odesolve

F64 = torch.float64


class ExpDecay(nn.Module):
    """torchdiffeq's "exp" problem: ``f(s, z) = -0.1·exp(-0.1 s)·1``, independent of ``z`` and of
    any parameter; ``z(s) = z0 + exp(-0.1 s) - 1``."""

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -0.1 * torch.exp(-0.1 * s) * torch.ones_like(z)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "midpoint", "euler"])
@pytest.mark.parametrize("engine", ["auto", "torchdiffeq"])
def test_adjoint_of_a_field_without_state_or_parameter_dependence(method, engine):
    """Outputs at 1, 4, 8 each equal z0 + const: d(sum)/dz0 = 3 exactly, the values the closed form."""
    step = None if method == "dopri5" else 0.05
    settings = SolverSettings(method=method, step_size=step, rtol=1e-9, atol=1e-9, sensitivity="adjoint", engine=engine)
    z0 = torch.tensor([[1.0, 2.0]], dtype=F64, requires_grad=True)
    s = torch.tensor([0.0, 1.0, 4.0, 8.0], dtype=F64)
    zs = odesolve(ExpDecay(), z0, s, settings)
    exact = z0.detach() + (torch.exp(-0.1 * s) - 1).reshape(-1, 1, 1)
    tol = {"dopri5": 1e-8, "rk4": 1e-8, "midpoint": 1e-4, "euler": 5e-3}[method]
    assert torch.allclose(zs, exact, atol=tol, rtol=0)
    (grad,) = torch.autograd.grad(zs[1:].sum(), z0)
    assert torch.allclose(grad, torch.full_like(grad, 3.0), atol=1e-12, rtol=0)


class LeafHorizon(nn.Module):
    """``dz/ds = S·tanh(W z)`` with a leaf ``nn.Parameter`` horizon ``S`` registered on the module
    (as :class:`nodex.models.neural_ode.BoundDynamics` registers a leaf horizon)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.W = nn.Parameter(torch.randn(2, 2, dtype=F64))
        self.horizon = nn.Parameter(torch.tensor(1.3, dtype=F64))

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.horizon * torch.tanh(z @ self.W.T)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
@pytest.mark.parametrize("engine", ["auto", "torchdiffeq"])
def test_a_leaf_horizon_passed_twice_gets_its_gradient_once(method, engine):
    """The caller passes the module's parameters and the horizon again (GeneralNeuralODE._solve does):
    the adjoint gradient of every parameter equals autograd's, not twice it."""
    z0 = torch.tensor([[0.5, -1.0], [1.5, 0.2]], dtype=F64)
    s = torch.tensor([0.0, 1.0], dtype=F64)
    grads = {}
    for sens in ("autograd", "adjoint"):
        field = LeafHorizon()
        step = None if method == "dopri5" else 0.01
        tols = {"rtol": 1e-11, "atol": 1e-11}
        settings = SolverSettings(method=method, step_size=step, sensitivity=sens, engine=engine, **tols)
        params = (*field.parameters(), field.horizon)
        loss = odesolve(field, z0, s, settings, adjoint_params=params)[-1].pow(2).sum()
        grads[sens] = torch.stack([g.reshape(-1)[0] for g in torch.autograd.grad(loss, [field.horizon, field.W])])
    assert torch.allclose(grads["adjoint"], grads["autograd"], rtol=1e-6, atol=0)


# ---------------------------------------------------------------- reference solutions (scipy)


def _scipy_solution(rhs, z0: torch.Tensor, t: list[float], jumps: tuple[float, ...] = ()) -> torch.Tensor:
    """``(len(t), *z0.shape)``: DOP853 at 1e-13, restarted at every jump (an independent reference)."""
    from scipy.integrate import solve_ivp

    shape, out, y = z0.shape, [z0.double().reshape(-1).numpy()], z0.double().reshape(-1).numpy()
    for a, b in zip(t[:-1], t[1:]):
        for lo, hi in zip([a, *[j for j in jumps if a < j < b]], [*[j for j in jumps if a < j < b], b]):
            mid = 0.5 * (lo + hi)  # the piece's own field, also at its ends
            fun = lambda s, v, mid=mid: rhs(s, v, mid)  # noqa: E731
            y = solve_ivp(fun, (lo, hi), y, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
        out.append(y)
    return torch.from_numpy(np.stack(out)).reshape(len(t), *shape)


class TimeVarying(nn.Module):
    """``f(s, z) = cos(3s)·A z + sin(2s)·1``: linear, depth-dependent, with a trainable ``A``."""

    def __init__(self, dtype: torch.dtype = F64) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=dtype))

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cos(3 * s) * z @ self.A.T + torch.sin(2 * s)

    def numpy_rhs(self, s: float, v, _piece_mid: float):
        A = self.A.detach().double().numpy()
        return math.cos(3 * s) * (v.reshape(-1, 2) @ A.T).reshape(-1) + math.sin(2 * s)


ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4}
Z0 = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=F64)


def _observed_orders(errors: list[float]) -> list[float]:
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.mark.parametrize("method", sorted(ORDERS))
@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_every_fixed_method_converges_at_its_order_on_a_time_varying_field(method, sensitivity):
    field = TimeVarying()
    t = [0.0, 0.7, 1.5]
    exact = _scipy_solution(field.numpy_rhs, Z0, t)
    errors = []
    for h in (1 / 20, 1 / 40, 1 / 80):
        settings = SolverSettings(method=method, step_size=h, sensitivity=sensitivity)
        ys = odesolve(field, Z0, torch.tensor(t, dtype=F64), settings)
        errors.append(float((ys[-1].detach() - exact[-1]).abs().max()))
    assert all(abs(p - ORDERS[method]) < 0.15 for p in _observed_orders(errors)), errors


def test_dopri5_error_follows_the_tolerance():
    """The global error stays within a small multiple of the tolerance (the control is local)
    and falls with it, at a step count that grows like tol^(-1/5)."""
    field = TimeVarying()
    t = [0.0, 0.5, 2.0]
    exact = _scipy_solution(field.numpy_rhs, Z0, t)
    errors, nfes = [], []
    for tol in (1e-4, 1e-6, 1e-8, 1e-10):
        counter = NFECounter()
        ys = odesolve(field, Z0, torch.tensor(t, dtype=F64), SolverSettings(rtol=tol, atol=tol), counter=counter)
        errors.append(float((ys.detach() - exact).abs().max()))
        nfes.append(counter.count)
        assert errors[-1] < 30 * tol, (tol, errors)
    assert all(b < a / 10 for a, b in zip(errors, errors[1:])), errors
    assert all(b < 3.5 * a for a, b in zip(nfes, nfes[1:])), nfes  # 100x tighter: ~100^(1/5) = 2.5x


# ------------------------------------------------------------------ gradients: three ways


def _loss(field: nn.Module, z0: torch.Tensor, settings: SolverSettings, t: list[float]) -> torch.Tensor:
    ys = odesolve(field, z0, torch.tensor(t, dtype=z0.dtype), settings)
    return (ys[1:] * torch.linspace(1.0, 2.0, len(t) - 1, dtype=z0.dtype).reshape(-1, 1, 1)).pow(2).sum()


def _finite_difference(field: TimeVarying, z0: torch.Tensor, settings: SolverSettings, t: list[float]) -> torch.Tensor:
    """Central differences of the loss in every entry of ``A`` (step 1e-6)."""
    grad = torch.zeros_like(field.A)
    with torch.no_grad():
        for idx in [(i, j) for i in range(2) for j in range(2)]:
            old = float(field.A[idx])
            field.A[idx] = old + 1e-6
            up = float(_loss(field, z0, settings, t))
            field.A[idx] = old - 1e-6
            down = float(_loss(field, z0, settings, t))
            field.A[idx] = old
            grad[idx] = (up - down) / 2e-6
    return grad


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_adjoint_equals_autograd_equals_finite_differences(method):
    field, t = TimeVarying(), [0.0, 0.4, 1.0]
    kwargs = {"rtol": 1e-11, "atol": 1e-11} if method == "dopri5" else {"step_size": 0.01}
    grads = {}
    for sens in ("autograd", "adjoint"):
        settings = SolverSettings(method=method, sensitivity=sens, **kwargs)
        (grads[sens],) = torch.autograd.grad(_loss(field, Z0, settings, t), [field.A])
    fd = _finite_difference(field, Z0, SolverSettings(method=method, **kwargs), t)
    scale = float(fd.abs().max())
    assert float((grads["autograd"] - fd).abs().max()) < 1e-7 * scale
    assert float((grads["adjoint"] - fd).abs().max()) < 1e-7 * scale


class OnlyParameter(nn.Module):
    """``f(s, z) = p·exp(-s)``: independent of ``z``; ``z(t) = z0 + p (1 - exp(-t))``."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.p * torch.exp(-s) * torch.ones_like(z)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_adjoint_of_a_field_without_state_dependence_gets_the_exact_parameter_gradient(method):
    """d/dp Σ_t z(t) = Σ_t (1 - exp(-t)) per state entry; dz/dz0 = 1 per output."""
    settings = SolverSettings(method=method, step_size=0.01, rtol=1e-10, atol=1e-10, sensitivity="adjoint")
    field, t = OnlyParameter(), [0.0, 1.0, 3.0]
    z0 = torch.zeros(3, 2, dtype=F64, requires_grad=True)
    ys = odesolve(field, z0, torch.tensor(t, dtype=F64), settings)
    gp, gz = torch.autograd.grad(ys[1:].sum(), [field.p, z0])
    exact = 6 * sum(1 - math.exp(-s) for s in t[1:])
    assert abs(float(gp) - exact) < 1e-8 * exact
    assert torch.allclose(gz, torch.full_like(gz, 2.0), atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_tuple_states_adjoint_equals_autograd_equals_finite_differences(method):
    """A state with its running integral ``q' = |z|²``: the gradients of a loss on both parts."""
    field, t = TimeVarying(), [0.0, 0.6, 1.2]
    kwargs = {"rtol": 1e-11, "atol": 1e-11} if method == "dopri5" else {"step_size": 0.01}

    def dynamics(s, zs):
        dz = field(s, zs[0])
        return dz, zs[0].pow(2).sum(1)

    def loss(settings):
        zs, qs = odesolve(dynamics, (Z0, torch.zeros(2, dtype=F64)), torch.tensor(t, dtype=F64), settings,
                          adjoint_params=(field.A,))
        return zs[-1].pow(2).sum() + qs[1:].sum()

    grads = {sens: torch.autograd.grad(loss(SolverSettings(method=method, sensitivity=sens, **kwargs)), [field.A])[0]
             for sens in ("autograd", "adjoint")}
    with torch.no_grad():
        fd = torch.zeros_like(field.A)
        for i, j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            old = float(field.A[i, j])
            values = []
            for delta in (1e-6, -1e-6):
                field.A[i, j] = old + delta
                values.append(float(loss(SolverSettings(method=method, **kwargs))))
            field.A[i, j] = old
            fd[i, j] = (values[0] - values[1]) / 2e-6
    scale = float(fd.abs().max())
    assert float((grads["autograd"] - fd).abs().max()) < 1e-7 * scale
    assert float((grads["adjoint"] - fd).abs().max()) < 1e-7 * scale


# ------------------------------------------------------------- breakpoints (jump_t) on fixed grids

JUMPS = (1 / 3, 0.6)  # pieces of 1/3, 4/15 and 2/5: steps h = 1/15, 1/30, 1/60 divide every piece


class Piecewise(nn.Module):
    """``f(s, z) = W_k tanh(z) + b_k`` on the pieces ``[0, 1/3), [1/3, 0.6), [0.6, ∞)`` (a stacked field)."""

    def __init__(self, dtype: torch.dtype = F64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.W = nn.Parameter(torch.randn(3, 2, 2, generator=g, dtype=F64).to(dtype))
        self.b = nn.Parameter(torch.randn(3, 2, generator=g, dtype=F64).to(dtype))
        self.register_buffer("edges", torch.tensor(JUMPS, dtype=F64))

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        k = int(torch.bucketize(s.detach().double(), self.edges, right=True))
        return torch.tanh(z) @ self.W[k].T + self.b[k]

    def numpy_rhs(self, s: float, v, piece_mid: float):
        k = int(np.searchsorted(JUMPS, piece_mid, side="right"))
        W, b = self.W[k].detach().double().numpy(), self.b[k].detach().double().numpy()
        return (np.tanh(v.reshape(-1, 2)) @ W.T + b).reshape(-1)


def _jump_errors(method: str, sensitivity: str, jump_t, steps, dtype=F64) -> list[float]:
    field, t = Piecewise(dtype), [0.0, 0.6, 1.0]  # outputs on nodes: no interpolation error
    exact = _scipy_solution(field.numpy_rhs, Z0, t, JUMPS)
    jumps = None if jump_t is None else torch.tensor(jump_t, dtype=F64)
    errors = []
    for h in steps:
        settings = SolverSettings(method=method, step_size=h, sensitivity=sensitivity)
        ys = odesolve(field, Z0.to(dtype), torch.tensor(t, dtype=dtype), settings, jump_t=jumps)
        errors.append(float((ys.detach().double() - exact).abs().max()))
    return errors


@pytest.mark.parametrize("method", sorted(ORDERS))
@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_fixed_methods_keep_their_order_on_a_piecewise_field_with_jump_t(method, sensitivity):
    errors = _jump_errors(method, sensitivity, JUMPS, (1 / 15, 1 / 30, 1 / 60))
    slack = 0.3 if method == "rk4" else 0.15  # rk4 is still pre-asymptotic at h = 1/15 (order 4.2)
    assert all(abs(p - ORDERS[method]) < slack for p in _observed_orders(errors)), errors


@pytest.mark.parametrize("method,factor", [("midpoint", 50), ("rk4", 1e5)])
def test_without_jump_t_a_fixed_grid_is_far_less_accurate(method, factor):
    """The contrast that makes the test above meaningful: a step straddling a jump costs an O(h)
    error (how much depends on where in the step the jump falls, so the convergence is erratic)."""
    steps = (1 / 16, 1 / 32, 1 / 64, 1 / 128)
    blind, honoured = _jump_errors(method, "autograd", None, steps), _jump_errors(method, "autograd", JUMPS, steps)
    assert all(b > factor * h for b, h in zip(blind, honoured)), (blind, honoured)
    assert blind[-1] > 1e-3  # still O(h): the order is gone


def test_float32_with_jump_t_is_float64_to_float32_precision():
    errors32 = _jump_errors("rk4", "autograd", JUMPS, (1 / 30,), dtype=torch.float32)
    errors64 = _jump_errors("rk4", "autograd", JUMPS, (1 / 30,))
    assert abs(errors32[0] - errors64[0]) < 1e-5


def test_one_sided_stages_on_jumps_and_a_node_on_each():
    """Every rk4 stage of a step lies in the step's own piece; a node sits on each jump."""
    depths = []

    class Spy(Piecewise):
        def forward(self, s, z):
            depths.append(float(s))
            return super().forward(s, z)

    for dtype in (torch.float32, F64):
        depths.clear()
        odesolve(Spy(dtype), Z0.to(dtype), torch.tensor([0.0, 1.0], dtype=dtype),
                 SolverSettings(method="rk4", step_size=0.1), jump_t=torch.tensor(JUMPS, dtype=F64))
        steps = [depths[i : i + 4] for i in range(0, len(depths), 4)]
        for j in JUMPS:
            j = float(torch.tensor(j, dtype=dtype))
            ending = [st for st in steps if j - 1e-6 < st[3] <= j]
            starting = [st for st in steps if j <= st[0] < j + 1e-6]
            assert len(ending) == 1 and len(starting) == 1, (j, steps)
            assert ending[0][3] < j < starting[0][0]  # one representable depth inside each side
        assert len(steps) == 4 + 3 + 4  # ceil(piece / 0.1) equal steps per piece


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_pieces_of_exactly_k_steps_take_k_steps_in_the_state_dtype(dtype):
    """A stacked model's ten pieces of length 0.1 at step 0.1 take one step each (40 rk4 evaluations), although the
    jumps k/10 rounded to float32 make some pieces a few ulps longer than 0.1."""
    calls = []

    def field(s, z):
        calls.append(float(s))
        return -z

    jumps = torch.tensor([k / 10 for k in range(1, 10)], dtype=dtype)
    for step, pieces in ((0.1, 10), (0.05, 20), (1 / 30, 30)):
        calls.clear()
        odesolve(field, Z0.to(dtype), torch.tensor([0.0, 1.0], dtype=dtype),
                 SolverSettings(method="rk4", step_size=step), jump_t=jumps)
        assert len(calls) == 4 * pieces, (step, len(calls))


def test_adjoint_gradient_converges_at_order_four_on_a_piecewise_field():
    """The backward solve has nodes on the (reversed) jumps too: the adjoint gradient of rk4
    approaches a tight dopri5 gradient (with jump_t) at order 4."""
    field, t = Piecewise(), [0.0, 1.0]
    jumps = torch.tensor(JUMPS, dtype=F64)

    def grad(settings):
        ys = odesolve(field, Z0, torch.tensor(t, dtype=F64), settings, jump_t=jumps)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(ys[-1].pow(2).sum(), [field.W, field.b])])

    reference = grad(SolverSettings(rtol=1e-12, atol=1e-12))
    errors = [float((grad(SolverSettings(method="rk4", step_size=h, sensitivity="adjoint")) - reference).abs().max())
              for h in (1 / 15, 1 / 30, 1 / 60)]
    assert all(abs(p - 4) < 0.3 for p in _observed_orders(errors)), errors


# ------------------------------------------------------------------------------- float32


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "dopri5", "tsit5"])
def test_float32_solves_and_gradients_agree_with_float64(method):
    """Fixed grids: values and gradients to float32 rounding of the same scheme. Adaptive pairs: in
    float32 the step sequence leaves float64's after a few steps (the error estimate is rounded),
    so they agree to the tolerance's order (values to 30x it, gradients within 1e-4)."""
    adaptive = method in ("dopri5", "tsit5")
    kwargs = {"rtol": 1e-6, "atol": 1e-6} if adaptive else {"step_size": 0.05}
    value_tol, grad_tol = (3e-5, 1e-4) if adaptive else (2e-5, 2e-5)  # adaptive: 30x the tolerance (global)
    t = [0.0, 0.5, 1.0]
    out = {}
    for dtype in (torch.float32, F64):
        for sens in ("autograd", "adjoint"):
            field = TimeVarying(dtype)
            settings = SolverSettings(method=method, sensitivity=sens, **kwargs)
            ys = odesolve(field, Z0.to(dtype), torch.tensor(t, dtype=dtype), settings)
            (g,) = torch.autograd.grad(ys[1:].pow(2).sum(), [field.A])
            assert ys.dtype == dtype and g.dtype == dtype
            out[dtype, sens] = (ys.detach().double(), g.double())
    for sens in ("autograd", "adjoint"):
        assert float((out[torch.float32, sens][0] - out[F64, sens][0]).abs().max()) < value_tol, sens
        g32, g64 = out[torch.float32, sens][1], out[F64, sens][1]
        assert float((g32 - g64).abs().max()) < grad_tol * float(g64.abs().max()), sens


def test_a_leaf_parameter_control_through_the_model_gets_its_adjoint_gradient_once():
    """The model-level case of the double gradient: a control that is a leaf ``nn.Parameter`` is
    registered on the bound dynamics and passed again as an extra adjoint tensor."""
    from nodex.models import GeneralNeuralODE

    class Gated(nn.Module):
        def forward(self, s, z, u):
            return torch.tanh(z) * u

    u = nn.Parameter(torch.tensor([[0.5, -1.0], [1.5, 0.3]], dtype=F64))
    grads = {}
    for sens in ("autograd", "adjoint"):
        settings = SolverSettings(rtol=1e-10, atol=1e-10, sensitivity=sens)
        model = GeneralNeuralODE(nn.Identity(), Gated(), nn.Identity(), settings, control=lambda x, z0: u)
        (grads[sens],) = torch.autograd.grad(model(Z0).z_S.pow(2).sum(), [u])
    assert torch.allclose(grads["adjoint"], grads["autograd"], rtol=1e-6, atol=0)
