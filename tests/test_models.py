"""Model slots: parameter counts of the paper's layouts, depth handling, order checks."""

from __future__ import annotations

import pytest
import torch

from nodex.errors import ConfigError
from nodex.models import DataSpec, build_model, count_parameters
from nodex.models.layers import DepthConcatLinear
from nodex.ode import SolverSettings


def _model(compose_cfg, *overrides, n_out=1, shape=(2,)):
    cfg = compose_cfg(list(overrides))
    return build_model(cfg.model, DataSpec(shape, n_out), SolverSettings(method="rk4", step_size=0.1))


@pytest.mark.slow
def test_paper_annuli_parameter_counts(compose_cfg):
    # paper §E1: vanilla 1,221 and depth-cat 1,285 parameters including the Linear(2,1) readout
    assert count_parameters(_model(compose_cfg, "model=vanilla")) == 1221
    assert count_parameters(_model(compose_cfg, "model=depthcat")) == 1285


def test_zero_init_last_layer_gives_the_identity_flow(compose_cfg):
    model = _model(compose_cfg, "model=vanilla")
    x = torch.randn(5, 2)
    assert torch.equal(model(x).z_S, x)


def test_depth_concat_field_sees_the_depth():
    torch.manual_seed(0)
    layer = DepthConcatLinear(2, 3)
    h = torch.randn(4, 2)
    a, b = layer(torch.tensor(0.0), h), layer(torch.tensor(0.7), h)
    assert torch.allclose(b - a, 0.7 * layer.weight[:, -1].expand(4, 3), atol=1e-6)
    # equals a plain linear layer on [h, s]
    ref = torch.nn.functional.linear(torch.cat([h, torch.full((4, 1), 0.7)], 1), layer.weight, layer.bias)
    assert torch.allclose(b, ref, atol=1e-6)


@pytest.mark.slow
def test_depth_concat_model_flow_depends_on_s_vanilla_does_not(compose_cfg):
    torch.manual_seed(0)
    vanilla = _model(compose_cfg, "model=vanilla", "model.field.zero_init_last=false")
    depthcat = _model(compose_cfg, "model=depthcat", "model.field.zero_init_last=false")
    z = torch.randn(3, 2)
    assert torch.equal(vanilla.field(torch.tensor(0.0), z, None), vanilla.field(torch.tensor(0.9), z, None))
    assert not torch.allclose(depthcat.field(torch.tensor(0.0), z, None), depthcat.field(torch.tensor(0.9), z, None))


@pytest.mark.slow
def test_order_must_divide_the_state_and_the_error_names_both_numbers(compose_cfg):
    with pytest.raises(ConfigError) as err:
        _model(compose_cfg, "model=vanilla", "model.order=3")
    assert "model.order=3" in str(err.value) and "2 channels" in str(err.value)


def test_higher_order_blocks_follow_the_chain(compose_cfg):
    model = _model(compose_cfg, "model=vanilla", "model.order=2", "model.field.zero_init_last=false", shape=(4,))
    z = torch.randn(3, 4)
    dz = model.field(torch.tensor(0.0), z, None)
    assert torch.equal(dz[:, :2], z[:, 2:])  # dq/ds = p


@pytest.mark.parametrize("key,value,needle", [("model.field.kind", "mlpp", "model.field.kind='mlpp'"), ("model.field.activation", "tanhh", "model.field.activation='tanhh'"), ("model.field.depth", "galerkinn", "model.field.depth='galerkinn'")])
def test_unknown_slot_kinds_list_the_choices(compose_cfg, key, value, needle):
    with pytest.raises(ConfigError) as err:
        _model(compose_cfg, f"{key}={value}")
    assert needle in str(err.value) and "choose one of" in str(err.value)


@pytest.mark.parametrize("kind", ["none", "concat", "galerkin", "stacked"])
def test_every_depth_kind_has_a_linear_a_conv_and_a_member_batched_form(kind):
    from nodex.models.depth import DEPTHS, batched_linear, depth_conv2d, depth_linear

    assert kind in DEPTHS
    torch.manual_seed(0)
    options = {"pieces": 3} if kind == "stacked" else {"m": 3, "init": "normal"} if kind == "galerkin" else None
    s, h = torch.tensor(0.7), torch.randn(5, 3)
    linear = depth_linear(kind, 3, 4, S=1.0, options=options)
    conv = depth_conv2d(kind, 2, 3, 3, S=1.0, options=options)
    assert linear(s, h).shape == (5, 4) and conv(s, torch.randn(2, 2, 6, 6)).shape == (2, 3, 6, 6)
    if kind != "none":  # the depth changes the output
        assert not torch.allclose(linear(torch.tensor(0.1), h), linear(s, h))
    # K = 2 members: the layer's batched form on stacked copies of its parameters gives each member's output
    names = [name for name, _ in linear.named_parameters()]
    batched = batched_linear(linear, "", {name: i for i, name in enumerate(names)})
    tensors = [torch.stack([p.detach(), 2 * p.detach()]) for p in linear.parameters()]
    out = batched(tensors, s, torch.stack([h, h]))
    torch.testing.assert_close(out[0], linear(s, h), rtol=1e-6, atol=1e-6)
    assert out.shape == (2, 5, 4) and not torch.allclose(out[0], out[1])
