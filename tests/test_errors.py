"""Bad input and failing runs: one-line messages, non-zero exits, nothing saved is lost."""

from __future__ import annotations

import json

import pytest
import torch

from nodex.train.tasks import supervised as tasks
from nodex.train.checkpoint import load_checkpoint


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("nodex: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model=galerkinn", "unknown model 'galerkinn'; choose one of:"),
        ("data=ringz", "unknown data 'ringz'; choose one of:"),
        ("solver=rk5", "unknown solver 'rk5'; choose one of:"),
        ("trainer.lrr=0.1", "unknown config key 'trainer.lrr'"),
        ("solver.method=rk5", "solver.method='rk5' is not a torchdiffeq method; choose one of:"),
        ("solver.rtol=-1e-3", "solver.rtol=-0.001 must be positive"),
        ("solver.atol=0", "solver.atol=0.0 must be positive"),
        ("solver=rk4 solver.step_size=0", "solver.step_size=0.0 must be positive"),
        ("solver=rk4 solver.step_size=-0.1", "solver.step_size=-0.1 must be positive"),
        ("trainer.max_steps=0", "trainer.max_steps=0 must be a positive integer"),
        ("trainer.max_steps=-5", "trainer.max_steps=-5 must be a positive integer"),
        ("trainer.optim.name=adamm", "trainer.optim.name='adamm' is unknown"),
        ("task.loss=hinge", "task.loss='hinge' is unknown"),
        ("trainer.device=tpu", "trainer.device='tpu' is not a device"),
        ("trainer.cuda_graph=true", "trainer.cuda_graph=true needs a fixed step count: solver.method=euler|midpoint|rk4"),
        ("trainer.cuda_graph=true solver=rk4 trainer.device=cpu", "trainer.cuda_graph=true needs a CUDA device, this run is on cpu"),
        ("trainer.cuda_graph=true solver=rk4 trainer.scheduler.name=cosine", "set trainer.scheduler.name=none"),
        ("trainer.cuda_graph=true solver=rk4 trainer.ensemble=2", "trainer.cuda_graph=true is for single runs"),
    ],
)
def test_bad_train_input(cli, tmp_path, override, needle):
    code, out, err = cli(["train", *override.split(), f"hydra.run.dir={tmp_path / 'r'}", "trainer.max_steps=2" if "max_steps" not in override else "seed=0"])
    assert code != 0
    assert needle in _one_line_error(err)


def test_config_errors_are_recorded_in_result_json(cli, tmp_path):
    code, _, err = cli(["train", "solver.rtol=-1", f"hydra.run.dir={tmp_path / 'r'}"])
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert code == 1 and result["status"] == "failed" and "solver.rtol=-1" in result["error"]


@pytest.fixture
def good_run(train_run):
    run_dir, result, code, err = train_run()
    assert code == 0, err
    return run_dir


def test_eval_missing_checkpoint(cli, tmp_path):
    code, _, err = cli(["eval", f"ckpt={tmp_path / 'nowhere.pt'}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "does not exist" in _one_line_error(err)


def test_eval_needs_ckpt(cli, tmp_path):
    code, _, err = cli(["eval", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code != 0 and "ckpt" in err


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a zip", b"PK\x03\x04truncated"])
def test_eval_corrupt_checkpoint(cli, tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    code, _, err = cli(["eval", f"ckpt={bad}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "is not a readable checkpoint" in _one_line_error(err)


def test_eval_foreign_torch_file_is_refused(cli, tmp_path):
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    code, _, err = cli(["eval", f"ckpt={foreign}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "is not a nodex checkpoint" in _one_line_error(err)


def test_eval_pickled_object_is_never_executed(cli, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("EXECUTED",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "nodex-checkpoint-v1", "x": Evil()}, evil)
    code, out, err = cli(["eval", f"ckpt={evil}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "EXECUTED" not in out and "is not a readable checkpoint" in _one_line_error(err)


def test_eval_run_directory_without_checkpoints_or_config(cli, tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    code, _, err = cli(["eval", f"ckpt={empty}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "has no checkpoints/last.pt" in _one_line_error(err)


def test_eval_unknown_override_key(cli, tmp_path, good_run):
    code, _, err = cli(["eval", f"ckpt={good_run}", "data.n_tst=5", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 2 and "unknown config key 'data.n_tst'" in _one_line_error(err)


def test_resume_from_a_missing_checkpoint(train_run, tmp_path):
    _, result, code, err = train_run(f"trainer.resume={tmp_path / 'missing'}")
    assert code == 1 and "does not exist" in _one_line_error(err)
    assert result["status"] == "failed"
    assert result["params"] == 1224 and result["threads"] >= 1  # what was built before the resume failed


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(train_run, monkeypatch):
    calls = {"n": 0}
    original = tasks.Classification.terminal_loss

    def poisoned(self, y_hat, y):
        calls["n"] += 1
        loss = original(self, y_hat, y)
        return loss * float("nan") if calls["n"] >= 13 else loss

    monkeypatch.setattr(tasks.Classification, "terminal_loss", poisoned)
    run_dir, result, code, err = train_run("trainer.val_every=0", "solver=rk4")  # fixed step: NaN flows to the check
    line = _one_line_error(err)
    assert code == 1 and "became non-finite by step 15" in line and "lower trainer.optim.lr" in line
    assert result["status"] == "failed" and "non-finite" in result["error"]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_a_diverging_run_reports_the_solver_and_step(train_run):
    run_dir, result, code, err = train_run("trainer.optim.lr=1e5", "solver.rtol=1e-3", "solver.atol=1e-3", "solver.max_num_steps=200")
    line = _one_line_error(err)
    assert code == 1 and result["status"] == "failed"
    assert "step" in line and ("dopri5" in line)


def test_ctrl_c_saves_a_checkpoint_and_marks_the_run_interrupted(train_run, monkeypatch):
    calls = {"n": 0}
    original = tasks.Classification.terminal_loss

    def interrupt(self, y_hat, y):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, y_hat, y)

    monkeypatch.setattr(tasks.Classification, "terminal_loss", interrupt)
    run_dir, result, code, err = train_run()
    assert code == 130
    assert result["status"] == "interrupted" and "trainer.resume=" in result["error"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 7


@pytest.mark.parametrize("override, needle", [
    ("solver.rtol=abc", "solver.rtol='abc' is not a number: give solver.rtol a number"),
    ("trainer.optim.lr=abc", "trainer.optim.lr='abc' is not a number"),
    ("seed=abc", "seed='abc' is not an integer"),
    ("trainer.max_steps=1.5", "trainer.max_steps=1.5 is not an integer"),
    ("trainer.epochs=1.5", "trainer.epochs=1.5 is not an integer"),
    ("trainer.plots=maybe", "trainer.plots='maybe' is not true or false"),
    ("logger.tensorboard=sometimes", "logger.tensorboard='sometimes' is not true or false"),
    ("data.n_train=abc", "data.n_train='abc' is not an integer: give data.n_train an integer"),
    ("model.field.hidden=abc", "model.field.hidden='abc' is not a list: give model.field.hidden a list"),
])
def test_type_errors_are_caught_when_the_config_is_composed(cli, tmp_path, override, needle):
    run_dir = tmp_path / "run"
    code, _, err = cli(["train", override, f"hydra.run.dir={run_dir}"])
    assert code == 2 and needle in _one_line_error(err)
    assert not run_dir.exists()  # refused before anything is written


def test_type_errors_in_python_compose_raise_validation_errors():
    from omegaconf.errors import ValidationError

    from nodex.config import compose, config_error_line

    with pytest.raises(Exception) as info:
        compose(["solver.rtol=abc"])
    assert isinstance(info.value.__cause__, ValidationError) or isinstance(info.value, ValidationError)
    assert config_error_line(info.value) == "solver.rtol='abc' is not a number: give solver.rtol a number"
    assert config_error_line(ValueError("other")) is None


@pytest.mark.parametrize("override, needle", [
    ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0 must be a positive max gradient norm or null"),
    ("trainer.grad_clip=0", "trainer.grad_clip=0.0 must be a positive max gradient norm or null"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0 must be a positive integer or null"),
    ("trainer.checkpoint_every=7", "trainer.checkpoint_every=7 must be a multiple of trainer.log_every=5"),
    ("model.horizon.S=inf", "model.horizon.S=inf (the integration horizon) must be a positive, finite number"),
    ("solver.S=2", "solver.S moved: use model.horizon.S=2"),
])
def test_bad_values_are_refused_before_training(train_run, override, needle):
    run_dir, result, code, err = train_run(override)
    assert code in (1, 2) and needle in _one_line_error(err)
    assert result is None or (result["status"] == "failed" and result["steps"] == 0)
    assert not (run_dir / "checkpoints").exists()
