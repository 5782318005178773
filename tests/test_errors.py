"""Bad input and failing runs: one-line messages, non-zero exits, nothing saved is lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nodex.train.tasks import supervised as tasks
from nodex.train.checkpoint import load_checkpoint


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("nodex: error: ")
    return lines[0]


@pytest.mark.slow
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
        ("solver.step_rule=hairr", "solver.step_rule='hairr'; choose one of: auto, torchdiffeq, hairer"),
        ("solver=rk4 solver.step_rule=hairer", "solver.step_rule=hairer applies to nodex's dopri5 and tsit5 only, not method=rk4: set step_rule=auto"),
        ("solver.engine=torchdiffeq solver.step_rule=hairer", "solver.step_rule=hairer needs nodex's engine (torchdiffeq takes its own steps): set engine=auto"),
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


@pytest.mark.slow
def test_config_errors_are_recorded_in_result_json(cli, tmp_path):
    code, _, err = cli(["train", "solver.rtol=-1", f"hydra.run.dir={tmp_path / 'r'}"])
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert code == 1 and result["status"] == "failed" and "solver.rtol=-1" in result["error"]


@pytest.fixture
def good_run(trained_run):
    """A completed run (the session's shared one: the eval tests below only read it)."""
    return trained_run


@pytest.mark.slow
def test_eval_missing_checkpoint(cli, tmp_path):
    code, _, err = cli(["eval", f"ckpt={tmp_path / 'nowhere.pt'}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "does not exist" in _one_line_error(err)


@pytest.mark.slow
def test_eval_needs_ckpt(cli, tmp_path):
    code, _, err = cli(["eval", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code != 0 and "ckpt" in err


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a zip", b"PK\x03\x04truncated"])
def test_eval_corrupt_checkpoint(cli, tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    code, _, err = cli(["eval", f"ckpt={bad}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "is not a readable checkpoint" in _one_line_error(err)


@pytest.mark.slow
def test_eval_foreign_torch_file_is_refused(cli, tmp_path):
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    code, _, err = cli(["eval", f"ckpt={foreign}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "is not a nodex checkpoint" in _one_line_error(err)


@pytest.mark.slow
def test_eval_pickled_object_is_never_executed(cli, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("EXECUTED",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "nodex-checkpoint-v1", "x": Evil()}, evil)
    code, out, err = cli(["eval", f"ckpt={evil}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "EXECUTED" not in out and "is not a readable checkpoint" in _one_line_error(err)


@pytest.mark.slow
def test_eval_run_directory_without_checkpoints_or_config(cli, tmp_path):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    code, _, err = cli(["eval", f"ckpt={empty}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "has no checkpoints/last.pt" in _one_line_error(err)


@pytest.mark.slow
def test_eval_unknown_override_key(cli, tmp_path, good_run):
    code, _, err = cli(["eval", f"ckpt={good_run}", "data.n_tst=5", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 2 and "unknown config key 'data.n_tst'" in _one_line_error(err)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "plot"])
def test_which_best_with_a_checkpoint_file_is_refused_not_ignored(cli, tmp_path, good_run, command):
    last = good_run / "checkpoints" / "last.pt"
    code, _, err = cli([command, f"ckpt={last}", "which=best", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and _one_line_error(err) == (
        f"nodex: error: which=best picks a run directory's checkpoints/best.pt, but '{last}' names a file: pass the "
        "run directory with which=best, or the file alone")
    assert not (tmp_path / "ev" / "eval.json").exists() and not (good_run / "plots" / "redrawn-last").exists()


@pytest.mark.slow
def test_resume_from_a_missing_checkpoint(train_run, tmp_path):
    run_dir, result, code, err = train_run(f"trainer.resume={tmp_path / 'missing'}")
    assert code == 1 and "does not exist" in _one_line_error(err)
    assert result is None and not run_dir.exists()  # refused before anything was written: no run folder left


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_diverging_run_reports_the_solver_and_step(train_run):
    run_dir, result, code, err = train_run("trainer.optim.lr=1e5", "solver.rtol=1e-3", "solver.atol=1e-3", "solver.max_num_steps=200")
    line = _one_line_error(err)
    assert code == 1 and result["status"] == "failed"
    assert "step" in line and ("dopri5" in line)


@pytest.mark.slow
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


@pytest.mark.slow
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

    from nodex.config import compose
    from nodex.cli_errors import config_error_line

    with pytest.raises(Exception) as info:
        compose(["solver.rtol=abc"])
    assert isinstance(info.value.__cause__, ValidationError) or isinstance(info.value, ValidationError)
    assert config_error_line(info.value) == "solver.rtol='abc' is not a number: give solver.rtol a number"
    assert config_error_line(ValueError("other")) is None


@pytest.mark.slow
@pytest.mark.parametrize("override, needle", [
    ("trainer.grad_clip=-1", "trainer.grad_clip=-1.0 must be a positive max gradient norm or null"),
    ("trainer.grad_clip=0", "trainer.grad_clip=0.0 must be a positive max gradient norm or null"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0 must be a positive integer or null"),
    ("trainer.checkpoint_every=7", "trainer.checkpoint_every=7 must be a multiple of trainer.log_every=5"),
    ("trainer.log_every=0", "trainer.log_every=0 must be a positive integer"),
    ("trainer.log_every=-3", "trainer.log_every=-3 must be a positive integer"),
    ("model.horizon.S=inf", "model.horizon.S=inf (the integration horizon) must be a positive, finite number"),
    ("solver.S=2", "solver.S moved: use model.horizon.S=2"),
])
def test_bad_values_are_refused_before_training(train_run, override, needle):
    run_dir, result, code, err = train_run(override)
    assert code in (1, 2) and needle in _one_line_error(err)
    assert result is None or (result["status"] == "failed" and result["steps"] == 0)
    assert not (run_dir / "checkpoints").exists()


# --- disk full, read-only run dir, out of memory: one line, a failed result.json, the last good checkpoint kept ---

ENOSPC = OSError(28, "No space left on device")


def _leftovers(run_dir) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_disk_full_while_plotting_is_a_warning_and_the_run_still_completes(train_run, monkeypatch):
    write_bytes = Path.write_bytes

    def disk_full(self, data):  # a figure is drawn in memory, then its bytes written: the disk fills there
        if not self.name.endswith(".png.tmp"):
            return write_bytes(self, data)
        write_bytes(self, data[:4])  # a torn file, as a full disk leaves it
        raise ENOSPC

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    run_dir, result, code, err = train_run("trainer.plots=true", "trainer.plot_every=10")
    assert code == 0 and err == "", err
    assert result["status"] == "completed" and result["error"] is None and result["steps"] == 20
    assert result["warnings"] == [f"figures of step {s} not written ([Errno 28] No space left on device); the run is "
                                  "unaffected" for s in (10, 20)]
    assert _leftovers(run_dir) == [] and list((run_dir / "plots").glob("*")) == []  # no torn png either
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 20


class _FullDisk:
    """A ``metrics.jsonl`` whose writes fail once ``rows`` rows were written."""

    def __init__(self, fh, rows: int) -> None:
        self.fh, self.rows = fh, rows

    def write(self, text: str) -> int:
        if self.rows == 0:
            raise ENOSPC
        self.rows -= 1
        return self.fh.write(text)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def _assert_failed_keeping_step_10(run_dir, result, code, err, needle):
    line = _one_line_error(err)
    assert code == 1 and needle in line and "free disk space or point hydra.run.dir elsewhere" in line
    assert result["status"] == "failed" and result["error"] == line.removeprefix("nodex: error: ")
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 10 and _leftovers(run_dir) == []


@pytest.mark.slow
def test_disk_full_while_writing_metrics_fails_the_run_in_one_line(train_run, monkeypatch):
    from nodex.train import logs

    real_init = logs.RunLogger.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self._jsonl = _FullDisk(self._jsonl, rows=3)  # steps 5 and 10 (train, val), then the disk is full

    monkeypatch.setattr(logs.RunLogger, "__init__", init)
    run_dir, result, code, err = train_run("logger.tensorboard=false")
    _assert_failed_keeping_step_10(run_dir, result, code, err,
                                   f"could not write {run_dir}/metrics.jsonl at step 15 ([Errno 28] No space left")


@pytest.mark.slow
def test_disk_full_while_writing_tensorboard_fails_the_run_in_one_line(train_run, monkeypatch):
    from torch.utils.tensorboard import SummaryWriter

    real_add, calls = SummaryWriter.add_scalar, []

    def add_scalar(self, tag, value, step, *args, **kwargs):
        calls.append(step)
        if step >= 15:  # the writer thread's error surfaces on the next call
            raise ENOSPC
        return real_add(self, tag, value, step, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)
    run_dir, result, code, err = train_run("logger.tensorboard=true")
    _assert_failed_keeping_step_10(run_dir, result, code, err,
                                   f"could not write {run_dir}/TensorBoard events at step 15 ([Errno 28]")


@pytest.mark.slow
def test_a_read_only_run_dir_is_refused_before_training_in_one_line(cli, tmp_path, monkeypatch):
    import errno
    import os

    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(run_dir)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    code, _, err = cli(["train", "trainer.max_steps=5", f"hydra.run.dir={run_dir}"])
    assert code == 1 and _one_line_error(err) == (
        f"nodex: error: cannot write into the run dir {run_dir} ([Errno 30] Read-only file system: "
        f"'{run_dir}/.nodex.lock'): choose a writable hydra.run.dir (hydra.sweep.dir for a sweep)")
    assert list(run_dir.iterdir()) == []  # refused before Hydra or the run wrote anything


def test_a_result_json_that_cannot_be_written_leaves_no_temp_file(tmp_path, monkeypatch):
    from pathlib import Path

    from nodex.train.results import write_json

    write_json(tmp_path / "result.json", {"status": "completed"})
    real_write = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real_write(self, text[:3])
        raise ENOSPC

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_json(tmp_path / "result.json", {"status": "failed"})
    monkeypatch.setattr(Path, "write_text", real_write)
    assert json.loads((tmp_path / "result.json").read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.slow
def test_an_impossible_data_size_is_one_line_and_a_failed_result(train_run):
    run_dir, result, code, err = train_run("data.n_train=10000000000")
    line = _one_line_error(err)
    assert code == 1 and line.startswith("nodex: error: data.n_train=10000000000, data.n_val=128, data.n_test=256 is "
                                         "10,000,000,384 samples: at least 80.0 GB, more than the ")
    assert line.endswith(" GB of memory available; lower data.n_train/n_val/n_test")
    assert result["status"] == "failed" and result["error"] == line.removeprefix("nodex: error: ")
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_out_of_memory_mid_run_is_one_line_and_keeps_the_last_checkpoint(train_run, monkeypatch):
    calls = {"n": 0}
    original = tasks.Classification.terminal_loss

    def allocation_fails(self, y_hat, y):
        calls["n"] += 1
        if calls["n"] == 13:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate "
                               "memory)")
        return original(self, y_hat, y)

    monkeypatch.setattr(tasks.Classification, "terminal_loss", allocation_fails)
    run_dir, result, code, err = train_run()
    line = _one_line_error(err)
    assert code == 1 and line == ("nodex: error: out of memory (an allocation of 40.0 GB failed): lower "
                                  "data.n_train/n_val/n_test, trainer.batch_size, trainer.eval_batch_size or "
                                  "trainer.ensemble")
    assert result["status"] == "failed" and result["error"] == line.removeprefix("nodex: error: ")
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 10 and _leftovers(run_dir) == []


# --- nodex eval: bad values, devices and broken run configs are one line ---

@pytest.mark.slow
@pytest.mark.parametrize("override, expected", [
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0 must be a positive integer or null (a split at once)"),
    ("trainer.device=cuda", "nodex eval picks its device with device=...: use device=cuda"),
    ("split=bogus", "split='bogus'; choose one of: train, val, test"),
])
def test_eval_bad_values_are_one_line(cli, tmp_path, good_run, override, expected):
    code, _, err = cli(["eval", f"ckpt={good_run}", override, f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and _one_line_error(err) == f"nodex: error: {expected}"


@pytest.mark.slow
def test_eval_type_errors_are_one_line_before_anything_runs(cli, tmp_path, good_run):
    code, _, err = cli(["eval", f"ckpt={good_run}", "data.n_test=abc", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 2 and _one_line_error(err) == ("nodex: error: data.n_test='abc' is not an integer: give "
                                                  "data.n_test an integer")
    assert not (tmp_path / "ev").exists()


@pytest.mark.slow
def test_eval_names_its_own_device_key(cli, tmp_path, good_run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, also where CI has a GPU
    code, _, err = cli(["eval", f"ckpt={good_run}", "device=cuda", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and _one_line_error(err) == ("nodex: error: device=cuda but CUDA is not available here: use "
                                                  "device=auto or cpu")


@pytest.mark.slow
def test_eval_of_an_impossible_test_split_is_one_line(cli, tmp_path, good_run):
    code, _, err = cli(["eval", f"ckpt={good_run}", "data.n_test=1000000000000", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and "data.n_test=1000000000000 is 1,000,000,000,256 samples: at least 8000.0 GB" in \
        _one_line_error(err)


@pytest.mark.slow
def test_eval_of_a_checkpoint_whose_config_is_broken_is_one_line(cli, tmp_path, good_run):
    from nodex.train.checkpoint import save_checkpoint

    broken = tmp_path / "broken.pt"
    save_checkpoint({**load_checkpoint(good_run / "checkpoints" / "last.pt"), "config": {"model": "x"}}, broken)
    code, _, err = cli(["eval", f"ckpt={broken}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 1 and _one_line_error(err) == (
        f"nodex: error: '{broken}' holds a run config that builds no model (ConfigAttributeError: Missing key "
        "trainer); evaluate a checkpoint written by nodex train")


@pytest.mark.slow
def test_a_non_integer_sample_count_is_refused_before_anything_is_written(cli, tmp_path):
    code, _, err = cli(["train", "data.n_train=abc", f"hydra.run.dir={tmp_path / 'r'}"])
    assert code == 2 and _one_line_error(err) == ("nodex: error: data.n_train='abc' is not an integer: give "
                                                  "data.n_train an integer")
    assert not (tmp_path / "r").exists()


def test_ctrl_c_before_the_run_starts_is_one_line(cli, tmp_path, monkeypatch):
    import nodex.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nodex.cli, "check_overrides", interrupted)  # while the command line is being checked
    code, _, err = cli(["train", f"hydra.run.dir={tmp_path / 'r'}"])
    assert code == 130 and _one_line_error(err) == "nodex: error: interrupted before the run started; nothing to resume"


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(train_run, monkeypatch):
    from nodex.train import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "fit", interrupted)
    run_dir, result, code, err = train_run()
    line = _one_line_error(err)
    assert code == 130 and line == "nodex: error: interrupted before the first checkpoint; nothing to resume"
    assert result["status"] == "interrupted"
    assert result["error"] == "interrupted at step 0, before the first checkpoint; nothing to resume"


@pytest.mark.slow
def test_the_console_script_turns_ctrl_c_while_importing_into_one_line():
    import subprocess
    import sys

    code = ("import sys; sys.argv[0] = '/usr/bin/nodex'; import signal, nodex.cli; "
            "print(signal.getsignal(signal.SIGINT).__name__); signal.raise_signal(signal.SIGINT)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "_interrupted_while_starting" and proc.returncode == 130
    assert proc.stderr.strip() == "nodex: error: interrupted while starting; nothing was run"


def test_allocation_failures_of_every_kind_read_as_out_of_memory():
    from nodex.train.setup import out_of_memory

    cuda = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)")
    assert str(out_of_memory(cuda)).startswith("out of memory (an allocation of 2.1 GB failed): lower data.n_train")
    assert str(out_of_memory(MemoryError())).startswith("out of memory: lower data.n_train/n_val/n_test")
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert out_of_memory(ValueError("out of memory")) is None  # only what allocators raise


@pytest.mark.slow
def test_checkpoint_messages_name_what_the_run_has(train_run, tmp_path):
    """An ensemble's top folder names its members; a missing best.pt names the checkpoint the run has; a cut-short
    last.pt points to the run's best.pt."""
    from nodex.errors import CheckpointError
    from nodex.train.checkpoint import read_run_checkpoint

    ens, _, code, err = train_run("trainer.ensemble=2", "solver=rk4", "trainer.max_steps=5", name="ens")
    assert code == 0, err
    with pytest.raises(CheckpointError, match=rf"is a seed ensemble: pass one member's run directory, "
                                              rf"{ens / 'member-0'} \.\.\. {ens / 'member-1'}"):
        read_run_checkpoint(ens)
    run_dir = ens / "member-0"
    (run_dir / "checkpoints" / "best.pt").unlink()
    with pytest.raises(CheckpointError, match=r"has no checkpoints/best.pt \(a run without a validation split keeps "
                                              r"no best.pt\): choose one it has, which=last"):
        read_run_checkpoint(run_dir, "best")
    single, _, code, err = train_run("trainer.max_steps=5", name="single")
    last = single / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=rf"is not a readable checkpoint \(.*\); continue from "
                                              rf"{single / 'checkpoints' / 'best.pt'} \(trainer.resume="):
        read_run_checkpoint(single)
