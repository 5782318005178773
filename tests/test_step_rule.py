"""``solver.step_rule``: how nodex's adaptive pairs take their first and last steps.

``torchdiffeq`` (dopri5's default: torchdiffeq's steps) starts from Hairer's initial-step rule with p = 4 and steps
past the last output depth, reading it off the dense output; ``hairer`` (tsit5's default; Hairer's DOPRI5 code,
DifferentialEquations.jl, torchdyn) uses p = 5 and shortens the last step to end on the last depth. Checked here:
where each rule evaluates the field, the first step against the rule computed by hand, the landing against an
independent reference loop, values against scipy and gradients adjoint = autograd = finite differences under the
non-default rule of each method, NFE accounting, and the settings' validation.
"""

from __future__ import annotations

import pytest
import torch
from test_ode_reference import JUMPS, Z0, Piecewise, TimeVarying, _scipy_solution

from nodex.errors import SolverError
from nodex.ode import NFECounter, SolverSettings, odesolve
from nodex.ode.lean.dopri5 import DOPRI5
from nodex.ode.lean.runge_kutta import STEP_RULES, with_step_rule
from nodex.ode.lean.tsit5 import TSIT5

F64 = torch.float64
NON_DEFAULT = [("dopri5", "hairer"), ("tsit5", "torchdiffeq")]


def _depths(method: str, rule: str, tol: float, t: list[float]) -> list[float]:
    """Every depth the time-varying field is evaluated at by ``method`` under ``rule``."""
    field, depths = TimeVarying(), []

    def spy(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        depths.append(float(s))
        return field(s, z)

    settings = SolverSettings(method=method, rtol=tol, atol=tol, step_rule=rule)
    odesolve(spy, Z0, torch.tensor(t, dtype=F64), settings)
    return depths


def test_the_rules_are_the_tableaus_defaults_and_replace_only_the_first_and_last_step():
    assert with_step_rule(DOPRI5) is DOPRI5 and with_step_rule(TSIT5) is TSIT5
    assert DOPRI5.step_rule == "torchdiffeq" and STEP_RULES["torchdiffeq"] == (False, 4)
    assert TSIT5.step_rule == "hairer"
    hairer = with_step_rule(DOPRI5, "hairer")
    assert STEP_RULES[hairer.step_rule] == (True, 5)
    assert hairer._replace(step_rule="torchdiffeq") == DOPRI5  # same coefficients
    for method in ("dopri5", "tsit5"):  # auto is each method's own rule, evaluation for evaluation
        own = "torchdiffeq" if method == "dopri5" else "hairer"
        assert _depths(method, "auto", 1e-5, [0.0, 2.0]) == _depths(method, own, 1e-5, [0.0, 2.0])


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_hairer_lands_on_the_last_depth_and_torchdiffeq_steps_past_it(method):
    for tol in (1e-3, 1e-6):
        landing = _depths(method, "hairer", tol, [0.0, 0.5, 2.0])
        past = _depths(method, "torchdiffeq", tol, [0.0, 0.5, 2.0])
        assert max(landing) == 2.0 and landing[-1] == 2.0  # FSAL: the last evaluation is at the end
        assert max(past) > 2.0


@pytest.mark.parametrize("method,c2", [("dopri5", 0.2), ("tsit5", 0.161)])
def test_the_first_step_follows_hairers_rule_with_the_rules_order(method, c2):
    """h1 = min(100 h0, (0.01 / max(d1, d2))^(1/(p+1))): p = 5 under hairer, 4 under torchdiffeq. The third
    evaluation is the first step's second stage, at c2 · h1."""
    tol, field = 1e-6, TimeVarying()
    with torch.no_grad():
        f0 = field(torch.tensor(0.0, dtype=F64), Z0)
        scale = Z0.abs() * tol + tol
        d0, d1 = float((Z0 / scale).pow(2).mean().sqrt()), float((f0 / scale).pow(2).mean().sqrt())
        h0 = 0.01 * d0 / d1
        f1 = field(torch.tensor(h0, dtype=F64), Z0 + h0 * f0)
        d2 = float(((f1 - f0) / scale).pow(2).mean().sqrt()) / h0
    for rule, p in (("hairer", 5), ("torchdiffeq", 4)):
        h1 = min(100 * h0, (0.01 / max(d1, d2)) ** (1 / (p + 1)))
        assert _depths(method, rule, tol, [0.0, 1.0])[2] == pytest.approx(c2 * h1, rel=1e-12), rule


def _reference_hairer_dopri5(t1: float, tol: float) -> tuple[torch.Tensor, int]:
    """An independent loop of Hairer's DOPRI5 rules on the time-varying field from 0 to ``t1``: (the end state,
    the evaluations). Written from the algorithm, not nodex's engine: scalar depths, a plain list of stages."""
    field = TimeVarying()
    c = (0.0, *DOPRI5.c)
    b_err = DOPRI5.e

    def f(s: float, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return field(torch.tensor(s, dtype=F64), z)

    def rms(x: torch.Tensor) -> float:
        return float(x.pow(2).mean().sqrt())

    y, t, nfe = Z0.clone(), 0.0, 0
    k1 = f(t, y)
    scale = y.abs() * tol + tol
    d0, d1 = rms(y / scale), rms(k1 / scale)
    h0 = 0.01 * d0 / d1
    d2 = rms((f(h0, y + h0 * k1) - k1) / scale) / h0
    h = min(100 * h0, (0.01 / max(d1, d2)) ** (1 / 6))
    nfe = 2
    while t < t1:
        if t + 1.01 * h >= t1:
            h = t1 - t
        ks = [k1]
        for ci, row in zip(c[1:], DOPRI5.a):
            ks.append(f(t + ci * h, y + h * sum(a * k for a, k in zip(row, ks))))
        y_new = y + h * sum(a * k for a, k in zip(DOPRI5.a[-1], ks))
        ks.append(f(t + h, y_new))
        nfe += 6
        err = h * sum(e * k for e, k in zip(b_err, ks))
        ratio = rms(err / (torch.maximum(y.abs(), y_new.abs()) * tol + tol))
        if ratio <= 1.0:
            t, y, k1 = t + h, y_new, ks[-1]
        factor = 10.0 if ratio == 0 else min(10.0, max(0.9 / ratio ** 0.2, 0.2 if ratio >= 1 else 1.0))
        h *= factor
    return y, nfe


@pytest.mark.parametrize("tol", [1e-3, 1e-5, 1e-8])
def test_dopri5_hairer_takes_the_reference_loops_steps(tol):
    counter = NFECounter()
    settings = SolverSettings(method="dopri5", rtol=tol, atol=tol, step_rule="hairer")
    with torch.no_grad():
        ys = odesolve(TimeVarying(), Z0, torch.tensor([0.0, 2.0], dtype=F64), settings, counter=counter)
    y_ref, nfe_ref = _reference_hairer_dopri5(2.0, tol)
    assert counter.count == nfe_ref
    assert torch.allclose(ys[-1], y_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
@pytest.mark.parametrize("method,rule", NON_DEFAULT)
def test_values_at_output_depths_against_scipy(method, rule, sensitivity):
    field, t = TimeVarying(), [0.0, 0.3, 1.1, 2.0]
    exact = _scipy_solution(field.numpy_rhs, Z0, t)
    for tol in (1e-5, 1e-8, 1e-11):
        settings = SolverSettings(method=method, rtol=tol, atol=tol, sensitivity=sensitivity, step_rule=rule)
        ys = odesolve(field, Z0, torch.tensor(t, dtype=F64), settings)
        assert float((ys.detach() - exact).abs().max()) < 30 * tol, tol


@pytest.mark.parametrize("method,rule", NON_DEFAULT)
def test_adjoint_equals_autograd_equals_finite_differences(method, rule):
    field, t = TimeVarying(), [0.0, 0.4, 1.0]

    def settings(sens: str = "autograd") -> SolverSettings:
        return SolverSettings(method=method, rtol=1e-11, atol=1e-11, sensitivity=sens, step_rule=rule)

    grads = {}
    for sens in ("autograd", "adjoint"):
        ys = odesolve(field, Z0, torch.tensor(t, dtype=F64), settings(sens))
        (grads[sens],) = torch.autograd.grad(ys[1:].pow(2).sum(), [field.A])
    fd = torch.zeros_like(field.A)
    with torch.no_grad():
        for i in range(2):
            for j in range(2):
                old, values = float(field.A[i, j]), []
                for delta in (1e-6, -1e-6):
                    field.A[i, j] = old + delta
                    values.append(float(odesolve(field, Z0, torch.tensor(t, dtype=F64), settings())[1:].pow(2).sum()))
                field.A[i, j] = old
                fd[i, j] = (values[0] - values[1]) / 2e-6
    for sens in ("autograd", "adjoint"):
        assert float((grads[sens] - fd).abs().max()) < 1e-6 * float(fd.abs().max()), sens


@pytest.mark.parametrize("method,rule", NON_DEFAULT)
def test_jumps_and_tuple_states_keep_their_accounting(method, rule):
    """Two evaluations to start, six per attempted step, one after each jump; a tuple state goes through the same
    flattened solve."""
    from nodex.ode.lean import runge_kutta

    attempts, real = [], runge_kutta._attempt

    def spy(*args, **kwargs):
        attempts.append(1)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runge_kutta, "_attempt", spy)
        counter = NFECounter()
        settings = SolverSettings(method=method, rtol=1e-7, atol=1e-7, step_rule=rule)
        t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
        ys = odesolve(Piecewise(), Z0, t, settings, counter=counter, jump_t=torch.tensor(JUMPS, dtype=F64))
        assert counter.count == 2 + 6 * len(attempts) + 2
    zs, qs = odesolve(lambda s, st: (Piecewise()(s, st[0]), st[0].sum(1)), (Z0, torch.zeros(2, dtype=F64)), t,
                      settings, jump_t=torch.tensor(JUMPS, dtype=F64))
    assert torch.allclose(zs, ys, rtol=1e-6, atol=1e-8) and qs.shape == (3, 2)


def test_settings_refuse_a_rule_where_it_cannot_apply():
    with pytest.raises(ValueError, match=r"^step_rule='land'; choose one of: auto, torchdiffeq, hairer$"):
        SolverSettings(step_rule="land")
    with pytest.raises(ValueError, match="applies to nodex's dopri5 and tsit5 only, not method=bosh3"):
        SolverSettings(method="bosh3", step_rule="torchdiffeq")
    with pytest.raises(ValueError, match="step_rule=hairer needs nodex's engine"):
        SolverSettings(engine="torchdiffeq", step_rule="hairer")
    assert SolverSettings(engine="torchdiffeq", step_rule="torchdiffeq").describe() == (
        "dopri5 rtol=0.0001 atol=0.0001 step_rule=torchdiffeq"
    )
    with pytest.raises(SolverError) as err:  # a solve nodex's engine does not cover: no silent torchdiffeq steps
        odesolve(TimeVarying(), Z0, torch.tensor([1.0, 0.0], dtype=F64), SolverSettings(step_rule="hairer"))
    assert str(err.value).startswith("method=dopri5 step_rule=hairer runs on nodex's own engine only")


def test_the_config_key_reaches_the_settings(compose_cfg):
    from nodex.train.setup import solver_settings

    cfg = compose_cfg(["solver.step_rule=hairer"])
    assert solver_settings(cfg.solver).step_rule == "hairer"
    assert solver_settings(compose_cfg([]).solver).step_rule == "auto"
