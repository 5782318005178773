"""GPU settings checked on a CPU. trainer.cuda_graph: the capture/replay bookkeeping of
GraphedStep (with a stand-in for the CUDA graph) and the config checks — the CUDA graph itself
runs in scripts/bench/gpu_check.py on a machine with a GPU; trainer.tf32: the backend flags it sets."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from omegaconf import OmegaConf

from nodex.errors import ConfigError
from nodex.ode import SolverSettings
from nodex.train.cuda_graph import GraphedStep
from nodex.train.setup import Pipeline, set_tf32, validate_cuda_graph


class RecordingBackend:
    """Stands in for a CUDA graph: ``capture`` records the step on the static inputs without
    running it (as a capture does not run kernels); ``replay`` runs it on whatever the static
    inputs hold and writes the results into the captured (static) outputs in place."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.eager_calls, self.captures, self.replays = fail, 0, 0, 0

    def eager(self, step, X, y):
        self.eager_calls += 1
        return step(X, y)

    def capture(self, step, X, y):
        self.captures += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        self.step, self.X, self.y = step, X, y
        self.out = (torch.zeros(()), {"mse": torch.zeros(())}, torch.zeros_like(X), 7, 0)
        return self.out

    def replay(self):
        self.replays += 1
        loss, parts, out, _, _ = self.step(self.X, self.y)
        self.out[0].copy_(loss)
        self.out[1]["mse"].copy_(parts["mse"])
        self.out[2].copy_(out)


def step(X, y):
    return X.sum() + y.sum(), {"mse": X.pow(2).mean()}, 2 * X, 7, 0


def test_warmup_runs_eagerly_then_one_capture_and_replays_of_each_batch():
    backend = RecordingBackend()
    graphed = GraphedStep(step, warmup=2, backend=backend)
    losses = []
    for i in range(6):
        X, y = torch.full((4, 2), float(i)), torch.ones(4)
        loss, parts, out, nfe_f, nfe_b = graphed(X, y)
        assert float(loss) == float(step(X, y)[0]) and torch.equal(out, 2 * X)  # this batch's step
        assert (nfe_f, nfe_b) == (7, 0)
        losses.append(loss)
    assert (backend.eager_calls, backend.captures, backend.replays) == (2, 1, 4)
    # the returned loss is a copy: later replays do not overwrite earlier values (the loop sums them)
    assert [float(v) for v in losses] == [4.0 + 8 * i for i in range(6)]


def test_a_batch_of_another_shape_runs_eagerly_and_the_graph_is_kept():
    backend = RecordingBackend()
    graphed = GraphedStep(step, warmup=1, backend=backend)
    graphed(torch.ones(4, 2), torch.ones(4))
    graphed(torch.ones(4, 2), torch.ones(4))
    loss, *_ = graphed(torch.ones(3, 2), torch.ones(3))  # a short last batch
    assert float(loss) == 9.0 and backend.eager_calls == 2 and backend.captures == 1
    graphed(torch.ones(4, 2), torch.ones(4))
    assert backend.replays == 2


def test_a_failed_capture_warns_once_and_training_continues_eagerly(caplog):
    backend = RecordingBackend(fail=True)
    graphed = GraphedStep(step, warmup=1, backend=backend)
    with caplog.at_level(logging.WARNING, logger="nodex"):
        results = [graphed(torch.full((2, 2), float(i)), torch.zeros(2)) for i in range(4)]
    assert [float(r[0]) for r in results] == [0.0, 4.0, 8.0, 12.0]
    assert backend.captures == 1 and backend.eager_calls == 4 and backend.replays == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["trainer.cuda_graph: capture failed (operation not permitted when stream is capturing); continuing without a CUDA graph"]


def _cfg(**trainer):
    base = {"cuda_graph": True, "ensemble": 1, "scheduler": {"name": "none"}}
    return OmegaConf.create({"trainer": {**base, **trainer}})


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_a_capturable_config_on_a_cuda_device_is_accepted(method):
    settings = SolverSettings(method=method, step_size=0.1)
    assert validate_cuda_graph(_cfg(), settings, torch.device("cuda")) is None
    # every check ran: the same config is refused at the last one, the device, on a CPU
    refusal = "trainer.cuda_graph=true needs a CUDA device, this run is on cpu: drop it or use trainer.device=cuda"
    with pytest.raises(ConfigError, match=f"^{re.escape(refusal)}$"):
        validate_cuda_graph(_cfg(), settings, torch.device("cpu"))
    # off: nothing to check, not even a solver no graph could capture
    assert validate_cuda_graph(_cfg(cuda_graph=False), SolverSettings(), torch.device("cpu")) is None


@pytest.mark.parametrize(
    "cfg,settings,needle",
    [
        (_cfg(), SolverSettings(), "needs a fixed step count"),
        (_cfg(), SolverSettings(method="rk4", step_size=0.1, sensitivity="adjoint"), "needs a fixed step count"),
        (_cfg(), SolverSettings(method="rk4", step_size=0.1, engine="torchdiffeq"), "needs a fixed step count"),
        (_cfg(), SolverSettings(method="heun3", step_size=0.1), "needs a fixed step count"),
        (_cfg(scheduler={"name": "step"}), SolverSettings(method="rk4", step_size=0.1), "set trainer.scheduler.name=none"),
        (_cfg(ensemble=4), SolverSettings(method="rk4", step_size=0.1), "is for single runs"),
    ],
)
def test_configs_that_cannot_be_captured_are_refused(cfg, settings, needle):
    with pytest.raises(ConfigError, match=needle):
        validate_cuda_graph(cfg, settings, torch.device("cuda"))


@pytest.fixture
def restore_tf32():
    yield
    set_tf32(False)


@pytest.mark.parametrize("enabled", [False, True])
def test_tf32_is_off_unless_asked_for(compose_cfg, restore_tf32, enabled):
    set_tf32(not enabled)  # start from the other state
    Pipeline(compose_cfg(["trainer.device=cpu", f"trainer.tf32={str(enabled).lower()}"]))
    assert torch.backends.cudnn.allow_tf32 is enabled and torch.backends.cuda.matmul.allow_tf32 is enabled
    assert torch.get_float32_matmul_precision() == ("high" if enabled else "highest")
