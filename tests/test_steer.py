"""STEER (``model.horizon.steer=b``): training end depths drawn from U(S − b, S + b) by a seeded stream that
checkpoints restore, evaluation at S, and the one-line refusals."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from nodex.errors import ConfigError
from nodex.models import DataSpec, GeneralNeuralODE, build_model
from nodex.models.cnf import CNF, GaussianPriors
from nodex.models.fields import MLPField
from nodex.models.regularizers import SteerDepth
from nodex.ode import SolverSettings
from nodex.train.checkpoint import load_checkpoint

TIGHT = SolverSettings(method="dopri5", rtol=1e-10, atol=1e-10)
LAM = -0.6


def _decay_field() -> MLPField:
    """f(s, z) = λ z, float64: z(T) = z0 e^{λT} tells the depth the solve reached."""
    field = MLPField(2, 2, hidden=[], depth="none", bias=False, zero_init_last=False).double()
    with torch.no_grad():
        field.layers[0].weight.copy_(LAM * torch.eye(2, dtype=torch.float64))
    return field


def test_draws_are_uniform_on_the_interval_and_repeat_with_the_seed():
    a, b = SteerDepth(2.0, 0.5, seed=7), SteerDepth(2.0, 0.5, seed=7)
    draws = torch.tensor([a.draw() for _ in range(4000)], dtype=torch.float64)
    assert [b.draw() for _ in range(5)] == draws[:5].tolist()
    assert 1.5 <= float(draws.min()) < 1.51 and 2.49 < float(draws.max()) <= 2.5
    assert float(draws.mean()) == pytest.approx(2.0, abs=0.02)
    assert float(draws.var()) == pytest.approx(1.0 / 12, rel=0.08)  # U(S − b, S + b): (2b)²/12
    assert SteerDepth(2.0, 0.5, seed=8).draw() != draws[0]


def test_the_stream_travels_in_the_state_dict():
    model = GeneralNeuralODE(torch.nn.Identity(), _decay_field(), torch.nn.Identity(), TIGHT, steer=SteerDepth(1.0, 0.5, 1))
    for _ in range(3):
        model.steer.draw()
    state = {k: v for k, v in model.state_dict().items()}
    assert "steer._extra_state" in state
    ahead = [model.steer.draw() for _ in range(2)]
    fresh = GeneralNeuralODE(torch.nn.Identity(), _decay_field(), torch.nn.Identity(), TIGHT, steer=SteerDepth(1.0, 0.5, 99))
    fresh.load_state_dict(state)
    assert [fresh.steer.draw() for _ in range(2)] == ahead


def test_training_solves_end_at_the_draw_and_evaluation_at_S():
    model = GeneralNeuralODE(torch.nn.Identity(), _decay_field(), torch.nn.Identity(), TIGHT, steer=SteerDepth(1.0, 0.5, 3))
    z0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    twin = SteerDepth(1.0, 0.5, 3)
    for _ in range(3):
        T = twin.draw()
        assert torch.allclose(model(z0).z_S, z0 * math.exp(LAM * T), rtol=1e-8)
    model.eval()
    assert torch.allclose(model(z0).z_S, z0 * math.exp(LAM * 1.0), rtol=1e-8)


def test_a_cnf_flows_to_the_drawn_depth_in_training():
    priors = GaussianPriors(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    cnf = CNF(_decay_field(), priors, TIGHT, dim=2, steer=SteerDepth(1.0, 0.4, 5))
    T = SteerDepth(1.0, 0.4, 5).draw()
    z0 = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        out = cnf(z0)
    assert torch.allclose(out.z_S, z0 * math.exp(LAM * T), rtol=1e-8)
    # log p(x) = log q(z(T)) − Δ(T), Δ(T) = −tr(λI)·T
    assert float(out.y_hat) == pytest.approx(float(priors.log_prob(out.z_S, torch.zeros(1, dtype=torch.long)))
                                             + 2 * LAM * T, rel=1e-8)


_MODEL = {"input_layer": {"kind": "identity"}, "field": {"kind": "mlp", "hidden": [4], "activation": "tanh"},
          "readout": {"kind": "linear"}, "horizon": {"kind": "fixed", "S": 1.0}}


def _build(**model) -> torch.nn.Module:
    cfg = OmegaConf.merge(OmegaConf.create(_MODEL), OmegaConf.create(model))
    return build_model(cfg, DataSpec((2,), 2), SolverSettings())


def test_steer_is_built_from_the_horizon_key_and_zero_is_off():
    assert _build(horizon={"steer": 0.0}).steer is None
    steer = _build(horizon={"S": 2.0, "steer": 0.5}).steer
    assert (steer.S, steer.half_width) == (2.0, 0.5)


@pytest.mark.parametrize(
    "model,message",
    [
        ({"horizon": {"steer": -0.1}}, "model.horizon.steer=-0.1 must be a number >= 0 (STEER's half-width b; 0: off)"),
        ({"horizon": {"steer": 1.0}}, "model.horizon.steer=1 must be below model.horizon.S=1 (end depths U(S-b, S+b))"),
        ({"horizon": {"kind": "learned", "steer": 0.2}},
         "model.horizon.steer=0.2 needs model.horizon.kind=fixed (a learned horizon sets its own depth)"),
        ({"horizon": {"steer": 0.2}, "integral_loss": {"kind": "tracking"}},
         "model.horizon.steer=0.2 cannot apply to a tracking target over depth (model.integral_loss.kind=tracking)"),
    ],
)
def test_steer_where_it_cannot_apply_is_refused_in_one_line(model, message):
    with pytest.raises(ConfigError) as err:
        _build(**model)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.slow
def test_a_resumed_steer_run_equals_the_uninterrupted_one(train_run):
    steer = ["model.horizon.steer=0.5", "seed=2", "trainer.checkpoint_every=10"]
    whole_dir, whole, code, err = train_run(*steer, name="whole")
    assert code == 0, err
    half_dir, _, code, err = train_run(*steer, "trainer.max_steps=10", name="half")
    assert code == 0, err
    resumed_dir, resumed, code, err = train_run(*steer, f"trainer.resume={half_dir}", name="resumed")
    assert code == 0, err
    a = load_checkpoint(whole_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(resumed_dir / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and "steer._extra_state" in a
    assert all(torch.equal(a[k], b[k]) for k in a if k != "steer._extra_state")
    assert torch.equal(a["steer._extra_state"]["generator"], b["steer._extra_state"]["generator"])
    assert resumed["metrics"] == whole["metrics"]
