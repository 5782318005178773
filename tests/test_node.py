"""``nodex.NeuralODE``, the torchdyn-style model: it trains in a plain PyTorch loop under the adjoint, every field
convention gives the closed-form solution, its NFE counts are exact and per call, the adjoint's gradients are
autograd's, the trajectory ends at ``node(x)``, shapes are kept, bad fields and settings are refused in one line,
and the README's example runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import nodex
from nodex.ode import SolverSettings, odesolve

README = Path(__file__).resolve().parents[1] / "README.md"
TIGHT = dict(rtol=1e-9, atol=1e-9)


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))


def test_an_nn_sequential_field_trains_under_the_adjoint_in_a_plain_loop():
    node = nodex.NeuralODE(_mlp(), solver="dopri5", sensitivity="adjoint")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    labels = (x[:, 0] + x[:, 1] > 0).long()  # separable: the flow has to turn it onto the logit axes
    optimizer = torch.optim.Adam(node.parameters(), lr=5e-2)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(node(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert node.nfe.forward > 0 and node.nfe.backward > 0  # the adjoint's own solve
    assert losses[-1] < losses[0] / 20, losses  # by 360x here; by 24x to 1200x for seeds 0-5
    assert (node(x).argmax(1) == labels).float().mean() > 0.95


class _DecayModule(nn.Module):
    """dz/ds = -s z as a module with forward(s, z)."""

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -s * z


def _minus_identity() -> nn.Linear:
    layer = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(-torch.eye(3))
    return layer


@pytest.mark.parametrize("field, exact", [
    (lambda s, z: -s * z, lambda x, S: x * math.exp(-S**2 / 2)),  # f(s, z), a function
    (_DecayModule(), lambda x, S: x * math.exp(-S**2 / 2)),  # f(s, z), a module
    (lambda z: -z, lambda x, S: x * math.exp(-S)),  # f(z), a function
    (_minus_identity(), lambda x, S: x * math.exp(-S)),  # f(z), a module
    (nn.Sequential(_minus_identity(), nn.Identity()), lambda x, S: x * math.exp(-S)),  # nn.Sequential: f(z)
], ids=["f(s,z)-function", "f(s,z)-module", "f(z)-function", "f(z)-module", "sequential"])
@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_every_field_convention_gives_the_closed_form(field, exact, sensitivity):
    S = 1.5
    node = nodex.NeuralODE(field, sensitivity=sensitivity, S=S, **TIGHT)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z_S = node(x)
    torch.testing.assert_close(z_S, exact(x, S), rtol=1e-7, atol=1e-7)
    z_S.sum().backward()  # dz(S)/dx is the same factor: the adjoint of a parameterless function included
    torch.testing.assert_close(x.grad, exact(torch.ones_like(x), S), rtol=1e-7, atol=1e-7)


def test_odesolve_takes_a_plain_function_under_the_adjoint_without_a_counter():
    """It asked the function for ``.parameters()`` (an AttributeError) before."""
    x = torch.ones(2, 2, requires_grad=True)
    settings = SolverSettings(method="dopri5", sensitivity="adjoint", rtol=1e-8, atol=1e-8)
    odesolve(lambda s, z: -z, x, torch.tensor([0.0, 1.0]), settings)[-1].sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2, 2), math.exp(-1)))


@pytest.mark.parametrize("field", [_mlp(), lambda s, z: -s * z], ids=["module", "function"])
def test_rk4_counts_are_exact_and_per_call(field):
    x = torch.randn(8, 2, requires_grad=True)
    autograd = nodex.NeuralODE(field, solver="rk4", step_size=0.25)
    autograd(x).sum().backward()
    assert autograd.nfe == (16, 0)  # 4 steps of 4 stages; autograd backpropagates through the stored graph
    adjoint = nodex.NeuralODE(field, solver="rk4", step_size=0.25, sensitivity="adjoint")
    adjoint(x).sum().backward()
    assert adjoint.nfe == (16, 16) and adjoint.nfe.forward == 16 and adjoint.nfe.backward == 16
    adjoint(x)  # a new call: the counts start over (no backward yet)
    assert adjoint.nfe == (16, 0)
    with torch.no_grad():
        adjoint.trajectory(x, [0.0, 0.5, 1.0])
    assert adjoint.nfe == (16, 0)


def test_adaptive_counts_forward_and_backward_apart():
    x = torch.randn(8, 2)
    node = nodex.NeuralODE(_mlp(), sensitivity="adjoint")
    node(x).pow(2).sum().backward()
    forward, backward = node.nfe
    assert forward > 0 and backward > 0 and forward % 6 == 2  # dopri5: 6 per step (FSAL), 2 for the first step
    node(x)
    assert node.nfe == (forward, 0)


def test_adjoint_gradients_are_autograds():
    # its own input (not whatever the tests before left in the global stream) and tolerances at which the two agree
    # to rtol 1e-6 for every input: at 1e-9, 19 of 60 random inputs differed by up to 2e-6 in a small component
    torch.manual_seed(0)
    x = torch.randn(16, 2, dtype=torch.float64)
    grads = {}
    for sensitivity in ("autograd", "adjoint"):
        field = _mlp(3).double()
        node = nodex.NeuralODE(field, sensitivity=sensitivity, rtol=1e-11, atol=1e-11)
        xs = x.clone().requires_grad_()
        node(xs).pow(2).sum().backward()
        grads[sensitivity] = [xs.grad, *(p.grad for p in field.parameters())]
    assert all(g.abs().max() > 1e-3 for g in grads["adjoint"])  # none vanishes
    for a, b in zip(grads["autograd"], grads["adjoint"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
def test_the_trajectory_ends_at_node_x(sensitivity):
    node = nodex.NeuralODE(_mlp(), sensitivity=sensitivity, S=2.0)
    x = torch.randn(5, 2)
    s_span = torch.linspace(0, 2, 7)
    zs = node.trajectory(x, s_span)
    assert zs.shape == (7, 5, 2)
    torch.testing.assert_close(zs[0], x)
    torch.testing.assert_close(zs[-1], node(x), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(zs[3], zs[-1])


def test_an_image_state_keeps_its_shape():
    torch.manual_seed(0)
    field = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 3, 3, padding=1))
    node = nodex.NeuralODE(field, sensitivity="adjoint")
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    z_S = node(x)
    assert z_S.shape == x.shape and not torch.allclose(z_S, x)
    z_S.sum().backward()
    assert x.grad.shape == x.shape and field[0].weight.grad is not None
    assert node.trajectory(x, [0.0, 0.5, 1.0]).shape == (3, 2, 3, 6, 6)


class _Controlled(nn.Module):
    def forward(self, s: torch.Tensor, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return z + u


def _keyword_only(z, *, scale):
    return scale * z


@pytest.mark.parametrize("field, shown", [
    (_Controlled(), "field _Controlled.forward(s, z, u) takes 3 required arguments"),
    (lambda: 0, "field <lambda>() takes 0 required arguments"),
    (_keyword_only, "field _keyword_only(z, *, scale) takes a required keyword-only argument"),
    (torch.tanh, "field tanh: cannot read its signature"),
    (3, "field of type int is not callable"),
])
def test_a_field_of_another_signature_is_refused_in_one_line(field, shown):
    with pytest.raises(TypeError) as info:
        nodex.NeuralODE(field)
    message = str(info.value)
    assert message == f"{shown}: a NeuralODE field is f(z) or f(s, z) (an nn.Module's forward or a function; " \
                      "s: the depth, a 0-d tensor)"


def test_a_nodex_field_with_an_optional_control_is_f_s_z():
    node = nodex.NeuralODE(nodex.MLPField(2, 2, hidden=(8,)))  # forward(s, z, x=None)
    assert node.takes_depth and node(torch.randn(3, 2)).shape == (3, 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rtol=0.0), "rtol=0.0 must be positive (e.g. rtol=1e-4)"),
    (dict(solver="rk4"), "method=rk4 is a fixed-step method: set its step_size (e.g. 0.1)"),
    (dict(sensitivity="backprop"), "sensitivity='backprop'; choose one of: autograd, adjoint"),
    (dict(max_num_steps=0), "max_num_steps=0 must be a positive integer"),
    (dict(S=0), "S=0 must be a positive number (the depth integrated to, e.g. S=1.0)"),
])
def test_bad_settings_get_solver_settings_messages(kwargs, message):
    with pytest.raises(ValueError) as info:
        nodex.NeuralODE(nn.Linear(2, 2), **kwargs)
    assert str(info.value) == message


def test_solver_settings_fields_pass_through_options():
    node = nodex.NeuralODE(nn.Linear(2, 2), solver="tsit5", max_num_steps=7, step_rule="torchdiffeq", seminorm=False)
    assert (node.settings.method, node.settings.max_num_steps, node.settings.step_rule) == ("tsit5", 7, "torchdiffeq")
    assert not node.settings.seminorm and node.settings.options == {}
    with pytest.raises(TypeError, match=r"^method='rk4': NeuralODE names the method solver= \(e.g. solver='rk4'\)$"):
        nodex.NeuralODE(nn.Linear(2, 2), method="rk4")


def test_a_field_of_the_wrong_output_shape_is_named():
    with pytest.raises(ValueError, match=re.escape("the field returned (3, 4) for a state (3, 2): dz/ds must")):
        nodex.NeuralODE(nn.Linear(2, 4))(torch.randn(3, 2))


def test_the_readme_example_runs(capsys):
    text = README.read_text()
    example = re.search(r"### Your own Neural ODE: `nodex.NeuralODE`\n.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    node, x, zs, decay = namespace["node"], namespace["x"], namespace["zs"], namespace["decay"]
    printed = capsys.readouterr().out.splitlines()
    assert namespace["loss"].item() < 0.2  # from about 2 (see the training test for the factor)
    assert printed[0].endswith("NFE(forward=26, backward=26)")  # what the README's comment says
    assert "NFE(forward=26, backward=26)" in example and "NFE(forward=16, backward=0)" in example
    assert zs.shape == (10, 64, 2)
    torch.testing.assert_close(zs[-1], node(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(decay(torch.ones(1, 2)), torch.full((1, 2), math.exp(-0.5)), rtol=1e-4, atol=1e-4)
    assert decay.nfe == (16, 0)


@pytest.mark.parametrize("span", [[0.0, 0.5, 0.5, 1.0], [0.0, 1.0, 0.5], [float("nan"), 1.0]])
def test_a_trajectory_over_depths_that_are_not_monotonic_is_refused(span):
    node = nodex.NeuralODE(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"s_span=.* must be strictly increasing or strictly decreasing"):
        node.trajectory(torch.randn(3, 2), span)


W64 = torch.tensor([[0.3, -0.8], [0.9, 0.2]], dtype=torch.float64, requires_grad=True)  # a global a field names


def _gradients(make_node, sensitivity: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    for t in tensors:
        t.grad = None
    x = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(3, 2)
    make_node(sensitivity)(x).pow(2).sum().backward()
    return [t.grad.clone() for t in tensors]


def test_the_adjoint_differentiates_the_tensors_a_function_field_closes_over_or_names():
    """A function field's own tensors (a closure variable, a global, a non-leaf control signal computed upstream)
    get the gradients autograd gives them under the adjoint too, not silently none."""
    torch.manual_seed(0)
    lin = nn.Linear(2, 2).double()
    w_closed = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)

    def make(sensitivity):
        u = lin(torch.ones(3, 2, dtype=torch.float64))  # non-leaf: its gradient flows on to lin's weights
        return nodex.NeuralODE(lambda z: torch.tanh(z @ w_closed + z @ W64 + u), sensitivity=sensitivity,
                               rtol=1e-10, atol=1e-10)

    tensors = [w_closed, W64, lin.weight, lin.bias]
    autograd, adjoint = _gradients(make, "autograd", tensors), _gradients(make, "adjoint", tensors)
    for a, b in zip(autograd, adjoint):
        assert a.abs().sum() > 0 and torch.allclose(a, b, rtol=1e-6, atol=1e-9)


def test_a_tensor_the_adjoint_cannot_see_is_refused_and_adjoint_params_adds_it():
    class Holder:
        pass

    held = Holder()
    held.w = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)  # read as an attribute: not found
    node = nodex.NeuralODE(lambda z: torch.tanh(z @ held.w), sensitivity="adjoint")
    with pytest.raises(ValueError, match=r"^the field depends on tensors that require grad \(\(2, 2\)\) which the "
                                         r"adjoint cannot see: pass them as NeuralODE\(\.\.\., adjoint_params="):
        node(torch.ones(3, 2, dtype=torch.float64))

    def make(sensitivity):
        extra = {"adjoint_params": [held.w]} if sensitivity == "adjoint" else {}
        return nodex.NeuralODE(lambda z: torch.tanh(z @ held.w), sensitivity=sensitivity, rtol=1e-10, atol=1e-10,
                               **extra)

    (autograd,), (adjoint,) = _gradients(make, "autograd", [held.w]), _gradients(make, "adjoint", [held.w])
    assert torch.allclose(autograd, adjoint, rtol=1e-6, atol=1e-9)


def test_odd_inputs_are_answered_or_refused_in_one_line():
    """An empty batch is an empty answer (dopri5 reported 'underflow in dt' and blamed the learning rate); a list,
    an integer tensor, an infinite depth and a field of another dtype are one line each (raw errors, or 10000 steps
    to max_num_steps, or a silent float32 result before)."""
    node = nodex.NeuralODE(_mlp())
    assert node(torch.randn(0, 2)).shape == (0, 2) and node.nfe == (0, 0)
    assert node.trajectory(torch.randn(0, 2), [0.0, 0.5, 1.0]).shape == (3, 0, 2)
    with pytest.raises(TypeError, match=r"^x is a list: NeuralODE integrates a tensor \(B, \.\.\.\), e\.g\. torch"):
        node([[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"^x has dtype torch\.int64: NeuralODE integrates floating-point states"):
        nodex.NeuralODE(_mlp(), solver="rk4", step_size=0.5)(torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^s_span=\[0\.0, inf\] must hold finite depths$"):
        node.trajectory(torch.ones(1, 2), [0.0, math.inf])
    with pytest.raises(ValueError, match=r"^the field returned torch\.float32 for a torch\.float64 state: dz/ds must "):
        nodex.NeuralODE(lambda z: z.float())(torch.ones(1, 2, dtype=torch.float64))
