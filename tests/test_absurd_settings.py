"""Absurd settings fail fast with one line that names the cause and what to change, never hours of silence, a
machine's worth of memory, a torch warning or an IndexError."""

from __future__ import annotations

import json
import time

import pytest
from conftest import FAST

from nodex.train.setup import out_of_memory

SMALL = [*FAST, "trainer.max_steps=5", "logger.tensorboard=false"]


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("nodex: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_a_huge_learning_rate_stops_within_the_step_at_the_solver_step_bound(cli, tmp_path):
    # a bound of 100 steps, not the default 1000 (test_every_adaptive_solver_has_a_finite_step_bound): the same stop,
    # a tenth of the solver steps
    run_dir = tmp_path / "run"
    start = time.monotonic()
    code, out, err = cli(["train", *SMALL, "trainer.optim.lr=1e10", "solver.max_num_steps=100",
                          f"hydra.run.dir={run_dir}"])
    assert time.monotonic() - start < 60  # before the bound: minutes and ~24 GB until killed
    line = one_line(err)
    assert code == 1 and "solver failed (max_num_steps exceeded (100>=100)) with dopri5" in line
    assert line.endswith("raise solver.max_num_steps, loosen solver.rtol/atol or lower trainer.optim.lr")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and "max_num_steps" in result["error"]


@pytest.mark.slow
@pytest.mark.parametrize("solver, lr", [("rk4", "1e10"), ("euler", "1e8")])
def test_a_fixed_step_run_whose_loss_explodes_stops_as_diverging(cli, tmp_path, solver, lr):
    """A fixed-step solver never hits max_num_steps: the run trained on to a loss of ~1e20 and 'completed'."""
    run_dir = tmp_path / "run"
    code, out, err = cli(["train", *SMALL, f"solver={solver}", "solver.step_size=0.25", f"trainer.optim.lr={lr}",
                          "trainer.max_steps=40", "trainer.log_every=5", f"hydra.run.dir={run_dir}"])
    line = one_line(err)
    assert code == 1 and line.startswith("nodex: error: train/loss rose from ")
    assert f"over the steps up to 5 with {solver} step_size=0.25: the training diverges; lower trainer.optim.lr" in line
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and "diverges" in result["error"]
    assert cli(["train", *SMALL, f"solver={solver}", "solver.step_size=0.25", "trainer.max_steps=40",
                "trainer.log_every=5", f"hydra.run.dir={tmp_path / 'sane'}"])[0] == 0  # the usual lr trains


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["dopri5", "dopri8", "tsit5", "bosh3", "adaptive_heun"])
def test_every_adaptive_solver_has_a_finite_step_bound(compose_cfg, solver):
    assert compose_cfg([f"solver={solver}"]).solver.max_num_steps == 1000


def test_out_of_memory_inside_the_solver_names_the_step_count_not_the_data_size():
    code = "raise RuntimeError(\"DefaultCPUAllocator: can't allocate memory: you tried to allocate 2147483648 bytes\")"
    for filename, expected in (("/site/nodex/ode/lean/runge_kutta.py", "inside the ODE solve"),
                               ("/site/nodex/train/loop.py", "lower data.n_train/n_val/n_test")):
        try:
            exec(compile(code, filename, "exec"))
        except RuntimeError as exc:
            message = str(out_of_memory(exc))
        assert message.startswith("out of memory (an allocation of 2.1 GB failed)") and expected in message
    assert message.endswith("trainer.eval_batch_size or trainer.ensemble")


def test_out_of_memory_in_the_solver_advises_lr_and_max_num_steps():
    try:
        exec(compile("raise MemoryError()", "/site/nodex/ode/solve.py", "exec"))
    except MemoryError as exc:
        message = str(out_of_memory(exc))
    assert message == ("out of memory inside the ODE solve: the solver took too many steps (a diverging model, e.g. "
                       "too high trainer.optim.lr, needs ever more); lower trainer.optim.lr or solver.max_num_steps, "
                       "or loosen solver.rtol/atol")


def test_out_of_memory_in_the_backward_pass_advises_the_adjoint():
    import torch

    from nodex.errors import ResourceError
    from nodex.train.loop import backward

    def failing(message: str):
        class Failing(torch.autograd.Function):  # a backward that fails as a long autograd graph's would
            @staticmethod
            def forward(ctx, x):
                return x * 2

            @staticmethod
            def backward(ctx, grad):
                raise RuntimeError(message)

        return Failing.apply(torch.ones(3, requires_grad=True)).sum()

    with pytest.raises(ResourceError) as info:
        backward(failing("DefaultCPUAllocator: can't allocate memory: you tried to allocate 3221225472 bytes"), 98)
    assert str(info.value) == ("out of memory in the backward pass (an allocation of 3.2 GB failed): autograd kept the "
                               "graph of 98 field evaluations; use solver.sensitivity=adjoint (memory flat in the "
                               "steps), lower trainer.batch_size, or loosen solver.rtol/atol")
    with pytest.raises(ResourceError, match="^out of memory in the adjoint's backward solve .*: lower trainer.batch_size"):
        backward(failing("CUDA out of memory. Tried to allocate 2.00 GiB"), 98, adjoint=True)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not an allocation failure: left as it is
        backward(failing("shape mismatch"), 1)


@pytest.mark.slow
def test_a_negative_val_every_is_refused(train_run):
    run_dir, result, code, err = train_run("trainer.val_every=-5")
    assert code == 1 and one_line(err) == ("nodex: error: trainer.val_every=-5 must be a positive integer, or 0/null "
                                           "to validate at the end only")


@pytest.mark.slow
def test_a_zero_hidden_width_is_refused_before_torch_warns(train_run):
    run_dir, result, code, err = train_run("model.field.hidden=[16,0]")
    assert code == 1 and "UserWarning" not in err
    assert one_line(err) == ("nodex: error: model.field.hidden=[16, 0] must list positive layer widths, e.g. [16, 16] "
                             "([] for no hidden layer)")


@pytest.mark.slow
def test_a_training_split_missing_a_class_is_refused(train_run):
    run_dir, result, code, err = train_run("data.n_train=1")
    assert code == 1 and "IndexError" not in err
    assert one_line(err) == ("nodex: error: data.n_train=1 leaves 1 of the 2 classes of rings out of the training "
                             "split: raise data.n_train to at least 2")


@pytest.mark.slow
def test_an_unquoted_unicode_value_says_to_quote_it(cli, tmp_path):
    code, out, err = cli(["train", *SMALL, f"hydra.run.dir={tmp_path}/résultats"])
    assert code == 2
    assert one_line(err) == (f"nodex: error: cannot parse hydra.run.dir={tmp_path}/résultats: quote a value with "
                             f"non-ASCII characters, hydra.run.dir='{tmp_path}/résultats' (in the shell: "
                             f"\"hydra.run.dir='{tmp_path}/résultats'\")")
    code, out, err = cli(["train", *SMALL, f"hydra.run.dir='{tmp_path}/résultats'"])
    assert code == 0, err
    assert json.loads((tmp_path / "résultats" / "result.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_sweep_from_an_unwritable_dir_names_hydra_sweep_dir(cli, tmp_path, monkeypatch):
    (tmp_path / "outputs").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1"])
    assert code == 1 and one_line(err).endswith("set hydra.sweep.dir=A/WRITABLE/DIR")


def _fake_run(run_dir, seed: int = 0) -> None:
    """A completed run's ``result.json`` (what ``nodex report`` reads), without training."""
    from nodex.runs import new_result, write_json

    result = new_result(seed, {"model": {"name": "vanilla"}, "data": {"name": "rings"}, "seed": seed})
    result.update(status="completed", metrics={"test/accuracy": 0.9})
    run_dir.mkdir(parents=True)
    write_json(run_dir / "result.json", result)


def test_report_by_a_key_no_run_has_is_one_line(cli, tmp_path):
    _fake_run(tmp_path / "runs" / "a")
    code, out, err = cli(["report", str(tmp_path / "runs"), "--by", "nokey.zz"])
    assert code == 2 and out == ""
    assert one_line(err) == ("nodex: error: no run has --by key 'nokey.zz'; give experiment, model, data, solver or a "
                             "dotted config key of the runs (e.g. trainer.optim.lr; `nodex train --cfg job` lists them)")
    code, out, _ = cli(["report", str(tmp_path / "runs"), "--by", "model"])  # a key the runs have still groups
    assert code == 0 and "vanilla" in out


@pytest.mark.parametrize("argv, line", [
    (["report", "DIR", "--format", "xml"], "nodex: error: argument --format: invalid choice: 'xml' (choose from "
                                           "'markdown', 'csv', 'json'); see nodex report --help"),
    (["train", "--cfg", "bogus"], "nodex: error: argument --cfg/-c: invalid choice: 'bogus' (choose from 'job', "
                                  "'hydra', 'all'); see nodex train --help"),
    (["reproduce", "--budget", "nope"], "nodex: error: argument --budget: invalid choice: 'nope' (choose from "
                                        "'cpu', 'full', 'smoke'); see nodex reproduce --help"),
])
def test_a_bad_flag_value_is_one_line_not_a_usage_block(capsys, tmp_path, argv, line):
    from nodex.cli import main

    try:
        code = main([str(tmp_path) if a == "DIR" else a for a in argv])
    except SystemExit as exc:  # the plain commands' parsers exit as argparse does (the console script's exit code)
        code = exc.code
    assert code == 2
    assert capsys.readouterr().err.strip() == line


@pytest.mark.parametrize("overrides, line", [
    (["trainer.optim.lr=inf"], "trainer.optim.lr=inf must be positive and finite (e.g. 0.005)"),
    (["trainer.optim.weight_decay=-0.1"], "trainer.optim.weight_decay=-0.1 must be >= 0 and finite (0: no decay)"),
    (["trainer.optim.betas=[1.5,0.9]"], "trainer.optim.betas=[1.5, 0.9] must be two numbers in [0, 1), e.g. [0.9, 0.999]"),
    (["trainer.optim.betas=[0.9]"], "trainer.optim.betas=[0.9] must be two numbers in [0, 1), e.g. [0.9, 0.999]"),
    (["trainer.optim.name=sgd", "trainer.optim.momentum=-1"],
     "trainer.optim.momentum=-1.0 must be in [0, 1) (0: plain SGD; 0.9 is usual)"),
    (["trainer.scheduler.name=step", "trainer.scheduler.step_size=0"],
     "trainer.scheduler.step_size=0 must be a positive integer (steps, or epochs with trainer.scheduler.unit=epoch, "
     "between decays)"),
    (["trainer.scheduler.name=exponential", "trainer.scheduler.gamma=-1"],
     "trainer.scheduler.gamma=-1.0 must be in (0, 1]: the factor each decay multiplies the learning rate by (e.g. 0.9)"),
])
def test_optimizer_and_scheduler_settings_are_checked_before_torch_sees_them(compose_cfg, overrides, line):
    from nodex.errors import ConfigError
    from nodex.train.setup import validate_trainer

    validate_trainer(compose_cfg(["trainer.optim.name=adam"]).trainer)  # the defaults pass
    with pytest.raises(ConfigError) as info:
        validate_trainer(compose_cfg(overrides).trainer)
    assert str(info.value) == line


@pytest.mark.parametrize("layers, bad", [([7], 7), ([0, 3], 3), ([-4], -4)])
def test_a_depth_layer_index_outside_the_field_is_refused_not_wrapped(compose_cfg, layers, bad):
    """A 3-layer GalNODE field: index 7 built the model of [1] (7 % 3), silently."""
    import nodex
    from nodex.models import DataSpec
    from nodex.errors import ConfigError

    cfg = compose_cfg(["model=galnode", f"model.field.depth_layers=[{','.join(map(str, layers))}]"])
    with pytest.raises(ConfigError) as info:
        nodex.build(cfg, spec=DataSpec((2,), 2))
    assert str(info.value).endswith(f"the field has 3 layers, so an index is 0..2 (or -1 for the last); {bad} is "
                                    "not one")
    assert "depth_layers" in str(info.value)


@pytest.mark.parametrize("overrides, start", [
    (["data.n_train=null"], "data.n_train=null: rings is generated, it has no fixed number of samples; give "
                            "data.n_train a number of samples (e.g. 1024)"),
    (["data=moons", "data.n_val=null"], "data.n_val=null: moons is generated"),
    (["data.params.radii=[]"], "data.params.radii=[], data.params.noise=0.1, data.params.dim=2 do not make a rings "
                               "dataset (IndexError: list index out of range); see configs/data/rings.yaml"),
    (["data.params.radii=[1.0]"], "data.params.radii=[1.0], data.params.noise=0.1, data.params.dim=2 do not make"),
    (["data.params.dim=0"], "data.params for 'rings' give samples of shape (0,): every dimension must be at least 1"),
])
def test_generated_data_settings_that_make_no_dataset_are_one_line(compose_cfg, overrides, start):
    """A TypeError from int(None), an IndexError, or (dim=0) a solver 'underflow in dt' blamed on the tolerances."""
    from nodex.data import build_data
    from nodex.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        build_data(compose_cfg(overrides).data, seed=0)
    assert str(info.value).startswith(start) and "\n" not in str(info.value)
