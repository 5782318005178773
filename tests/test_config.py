"""Typed schemas catch type errors at compose time; moved keys and old run configs."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from nodex.cli_errors import config_error_line
from nodex.config import compose, upgrade_run_config
from nodex.errors import ConfigError
from nodex.models.build import DataSpec, build_model, horizon_length
from nodex.ode import SolverSettings
from nodex.train.setup import solver_settings


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,line",
    [
        ("solver.rtol=abc", "solver.rtol='abc' is not a number"),
        ("seed=abc", "seed='abc' is not an integer"),
        ("trainer.optim.lr=abc", "trainer.optim.lr='abc' is not a number"),
        ("trainer.max_steps=1.5", "trainer.max_steps=1.5 is not an integer"),
        ("trainer.tf32=maybe", "trainer.tf32='maybe' is not true or false"),
        ("solver.max_num_steps=many", "solver.max_num_steps='many' is not an integer"),
    ],
)
def test_type_errors_raise_at_compose_time_as_one_line(override, line):
    with pytest.raises(Exception) as err:
        compose([override])
    assert config_error_line(err.value).startswith(line)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,line",
    [
        (["data.n_train=abc"], "data.n_train='abc' is not an integer: give data.n_train an integer"),
        (["data.resample=maybe"], "data.resample='maybe' is not true or false: give data.resample true or false"),
        (["data=mnist", "data.flatten=sure"], "data.flatten='sure' is not true or false: give data.flatten true or false"),
        (["model.field.hidden=abc"], "model.field.hidden='abc' is not a list: give model.field.hidden a list"),
        (["model.field.hidden=[8,x]"], "model.field.hidden[1]='x' is not an integer: give model.field.hidden[1] an integer"),
        (["model.order=1.5"], "model.order=1.5 is not an integer: give model.order an integer"),
        (["model.horizon.S=far"], "model.horizon.S='far' is not a number: give model.horizon.S a number"),
        (["model=cnf", "model.conditions=two"], "model.conditions='two' is not an integer: give model.conditions an integer"),
        (["task.terminal_weight=x"], "task.terminal_weight='x' is not a number: give task.terminal_weight a number"),
        (["experiment=galerkin_tracking", "task.points_per_unit=many"],
         "task.points_per_unit='many' is not an integer: give task.points_per_unit an integer"),
    ],
)
def test_model_data_and_task_keys_are_typed_at_compose_time(overrides, line):
    with pytest.raises(Exception) as err:
        compose(overrides)
    assert config_error_line(err.value) == line


@pytest.mark.slow
def test_open_schemas_add_no_keys_and_still_refuse_unknown_ones():
    from nodex.cli import one_line

    images, toy = compose(["data=cifar10"]).data, compose(["data=rings"]).data
    assert "resample" not in images and "params" not in images and "flatten" not in toy  # each preset's own keys
    assert "order" not in compose(["model=cnf"]).model and "trace" not in compose(["model=vanilla"]).model
    for override in ("data.nosie=0.1", "model.field.hiddn=[8]", "task.eval_horizon=2"):
        with pytest.raises(Exception) as err:
            compose([override])
        assert one_line(err.value).startswith(f"unknown config key '{override.split('=')[0]}'")
    assert compose(["+model.field.out_bias=1.0"]).model.field.out_bias == 1.0  # + still adds a preset's extra key


def test_an_unknown_key_in_a_typed_group_names_the_key():
    with pytest.raises(Exception) as err:
        compose(["trainer.lrr=0.1"])
    from nodex.cli import one_line

    assert config_error_line(err.value) is None  # not a type error
    assert one_line(err.value).startswith("unknown config key 'trainer.lrr'")


def test_values_of_the_right_type_compose_and_keep_the_yaml_defaults():
    cfg = compose(["solver=rk4", "trainer.max_steps=7", "seed=3", "trainer.optim.lr=0.01"])
    assert (cfg.trainer.max_steps, cfg.seed, cfg.trainer.optim.lr) == (7, 3, 0.01)
    assert cfg.solver.step_size == 0.1 and cfg.solver.method == "rk4"
    assert cfg.trainer.optim.weight_decay == 0.0 and cfg.trainer.scheduler.step_size == 100


@pytest.mark.parametrize("override", ["solver.S=2", "+solver.S=2", "solver.S=0.5"])
def test_solver_S_moved_to_the_model_horizon(override):
    with pytest.raises(ConfigError) as err:
        compose([override])
    value = override.split("=")[1]
    assert str(err.value) == f"solver.S moved: use model.horizon.S={value}"


@pytest.mark.slow
def test_the_horizon_is_a_model_slot():
    cfg = compose(["model.horizon.S=2.5"])
    assert "S" not in cfg.solver and cfg.model.horizon.kind == "fixed"
    assert horizon_length(cfg.model) == 2.5 and "S" not in SolverSettings.__dataclass_fields__  # solver things only
    model = build_model(cfg.model, DataSpec((2,), 2), solver_settings(cfg.solver, cfg.model))
    assert model.S == 2.5 and model.span.tolist() == [0.0, 2.5]
    tracking = compose(["experiment=galerkin_tracking", "model.horizon.S=3.0"])
    assert tracking.task.S == 3.0
    learned = compose(["model=adaptive_depth"])
    assert learned.model.horizon.kind == "learned" and learned.model.horizon.S == 1.0


@pytest.mark.parametrize("S", [0.0, -1.0])
def test_a_non_positive_horizon_names_the_new_key(S):
    with pytest.raises(ConfigError, match=r"model.horizon.S=-?[0-9.]+ \(the integration horizon\) must be a positive"):
        horizon_length(compose([f"model.horizon.S={S}"]).model)


def test_upgrade_run_config_moves_solver_S():
    old = {"solver": {"method": "rk4", "S": 2.0}, "model": {"name": "vanilla"}, "task": {"S": "${solver.S}"}}
    new = upgrade_run_config(old)
    assert new["solver"] == {"method": "rk4"} and new["model"]["horizon"] == {"kind": "fixed", "S": 2.0}
    assert new["task"]["S"] == "${model.horizon.S}" and OmegaConf.create(new).task.S == 2.0
    assert old["solver"]["S"] == 2.0  # the input is not modified
    learned = upgrade_run_config({"solver": {"S": 1.5}, "model": {"horizon": {"kind": "learned", "s_min": 0.0}}})
    assert learned["model"]["horizon"] == {"kind": "learned", "s_min": 0.0, "S": 1.5}
    assert upgrade_run_config(new) == new  # the new layout comes back unchanged


def test_an_older_checkpoints_config_is_upgraded_where_checkpoints_are_read(tmp_path):
    """``load_checkpoint`` is the one place an older run's config is brought to today's layout: resume, eval and
    ``nodex.load`` all read through it."""
    import torch

    from nodex.train.checkpoint import FORMAT, load_checkpoint

    old = {"solver": {"method": "rk4", "S": 2.0}, "model": {"name": "vanilla"}, "task": {"S": "${solver.S}"}}
    torch.save({"format": FORMAT, "config": old, "model": {}}, tmp_path / "last.pt")
    config = load_checkpoint(tmp_path / "last.pt")["config"]
    assert config["solver"] == {"method": "rk4"} and config["model"]["horizon"] == {"kind": "fixed", "S": 2.0}
    assert OmegaConf.create(config).task.S == 2.0
