"""Shared fixtures: compose the real configs, and run the CLI in-process in a temp dir."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from nodex.cli import CONFIG_DIR, main

# Small budgets that keep a CLI run to a few seconds on one core.
FAST = [
    "trainer.max_steps=20",
    "trainer.log_every=5",
    "trainer.val_every=10",
    "trainer.checkpoint_every=10",
    "data.n_train=128",
    "data.n_val=128",
    "data.n_test=256",
    "trainer.plots=false",
]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Each test starts with the handlers the session had and leaves them so: a library a test starts in-process (Ray
    installs a SIGTERM handler that exits with code 15) must not change how a later in-process run is stopped."""
    signums = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR2, signal.SIGHUP]
    saved = {s: signal.getsignal(s) for s in signums}
    yield
    for signum, handler in saved.items():
        if signal.getsignal(signum) is not handler and handler is not None:
            signal.signal(signum, handler)


@pytest.fixture
def compose_cfg():
    """``compose_cfg(overrides, config_name="train")`` -> the composed DictConfig."""

    def _compose(overrides: list[str] | None = None, config_name: str = "train"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
            return compose(config_name=config_name, overrides=list(overrides or []))

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def cli(tmp_path, capsys):
    """``cli(args) -> (exit_code, stdout, stderr)``; runs ``nodex`` in-process."""

    def _run(args: list[str]):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One default FAST run (vanilla on rings, dopri5, 20 steps), trained once for the session and shared by the
    tests that only read it (eval, checkpoint contents, train.log, refusals): they must write nothing into it."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", *FAST, f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


@pytest.fixture
def train_run(tmp_path, cli):
    """``train_run(*overrides) -> (run_dir, result)`` for a short training run in ``tmp_path``."""

    def _train(*overrides: str, name: str = "run"):
        run_dir = tmp_path / name
        code, out, err = cli(["train", *FAST, f"hydra.run.dir={run_dir}", *overrides])
        result_path = run_dir / "result.json"
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        return run_dir, result, code, err

    return _train


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All TensorBoard scalars in ``run_dir`` as ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}
