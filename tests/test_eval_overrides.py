"""``nodex eval`` applies the solver switches it can (a solver preset, tolerances, step size) to a trained run and
refuses, with exit 2 and one line, the switches that do not fit the checkpoint (model, architecture, data, task)."""

from __future__ import annotations

import json

import pytest

from nodex.cli import main


@pytest.fixture
def trained(trained_run):
    """One tiny vanilla run on rings (dopri5, rtol=atol=1e-4): the session's shared run (tests/conftest.py)."""
    return trained_run


def _eval(run_dir, out_dir, *overrides: str) -> tuple[int, dict | None]:
    code = main(["eval", f"ckpt={run_dir}", *overrides, f"hydra.run.dir={out_dir}"])
    path = out_dir / "eval.json"
    return code, json.loads(path.read_text()) if path.exists() else None


@pytest.mark.slow
def test_plain_eval_applies_nothing_and_records_the_run_solver(trained, tmp_path):
    code, payload = _eval(trained, tmp_path / "ev")
    assert code == 0 and payload["applied"] == {}
    assert payload["solver"]["method"] == "dopri5" and payload["solver"]["rtol"] == 1e-4


@pytest.mark.slow
def test_rk4_preset_with_a_step_size_evaluates_with_rk4(trained, tmp_path):
    code, payload = _eval(trained, tmp_path / "ev", "solver=rk4", "solver.step_size=0.25")
    assert code == 0
    # rk4 (3/8 rule): 4 field evaluations per step, 4 steps of 0.25 over [0, 1]
    assert payload["metrics"]["test/nfe_forward"] == 16
    assert payload["applied"] == {"solver.method": "rk4", "solver.step_size": 0.25, "solver.max_num_steps": 10_000}
    assert payload["solver"]["method"] == "rk4" and payload["solver"]["step_size"] == 0.25
    _, default = _eval(trained, tmp_path / "dopri5")
    assert default["metrics"]["test/nfe_forward"] != 16  # dopri5 took its own, adaptive steps
    assert payload["metrics"]["test/accuracy"] == pytest.approx(default["metrics"]["test/accuracy"], abs=0.05)


@pytest.mark.slow
def test_a_key_of_the_solver_alone_switches_the_method(trained, tmp_path):
    code, payload = _eval(trained, tmp_path / "ev", "solver.method=euler", "solver.step_size=0.125")
    assert code == 0 and payload["metrics"]["test/nfe_forward"] == 8
    assert payload["applied"] == {"solver.method": "euler", "solver.step_size": 0.125}


@pytest.mark.slow  # a 3-job eval multirun down to rtol 1e-7
def test_a_tolerance_sweep_gives_a_different_nfe_per_tolerance(trained, tmp_path):
    sweep = tmp_path / "sweep"
    code = main(["eval", "--multirun", f"ckpt={trained}", "solver.rtol=1e-3,1e-5,1e-7", "solver.atol=1e-7",
                 f"hydra.sweep.dir={sweep}"])
    assert code == 0
    payloads = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/eval.json"))]
    assert [p["applied"] for p in payloads] == [{"solver.rtol": r, "solver.atol": 1e-7} for r in (1e-3, 1e-5, 1e-7)]
    nfe = [p["metrics"]["test/nfe_forward"] for p in payloads]
    assert nfe[0] < nfe[1] < nfe[2], nfe  # tighter tolerance, more steps


@pytest.mark.slow
def test_data_sample_sizes_are_still_applied(trained, tmp_path):
    code, payload = _eval(trained, tmp_path / "ev", "data.n_test=512")
    assert code == 0 and payload["applied"] == {"data.n_test": 512}


@pytest.mark.slow
def test_choosing_the_run_own_presets_is_no_switch(trained, tmp_path):
    code, payload = _eval(trained, tmp_path / "ev", "model=vanilla", "data=rings", "task=classification")
    assert code == 0 and payload["applied"] == {}


@pytest.mark.slow
@pytest.mark.parametrize("override, expected", [
    ("model=galnode", "model=galnode does not fit the checkpoint (trained with model=vanilla); nodex eval cannot "
                      "switch it: train a new run with model=galnode"),
    ("model.field.hidden=[8]", "model.field.hidden=[8] changes what the checkpoint was trained as; nodex eval "
                               "cannot apply it: train a new run with model.field.hidden=[8]"),
    ("model.horizon.S=2.0", "model.horizon.S=2.0 changes what the checkpoint was trained as; nodex eval cannot "
                            "apply it: train a new run with model.horizon.S=2.0"),
    ("data=moons", "data=moons does not fit the checkpoint (trained with data=rings); nodex eval cannot switch it: "
                   "train a new run with data=moons"),
    ("task=regression", "task=regression does not fit the checkpoint (trained with task=classification); nodex eval "
                        "cannot switch it: train a new run with task=regression"),
    ("trainer=table1", "trainer=table1: nodex eval applies no training preset (of trainer.* it reads "
                       "trainer.eval_batch_size)"),
    # a slot of the model, a training setting, a key that is no setting: silently ignored (exit 0) before
    ("model/field=conv", "model/field=conv changes what the checkpoint was trained as; nodex eval cannot apply it: "
                         "train a new run with model/field=conv"),
    *[(line, f"{line}: nodex eval uses no such setting (it takes ckpt, split, which, device, a solver, and solver.*, "
             "data.*, task.*, trainer.eval_batch_size keys); a training setting belongs to nodex train")
      for line in ("seed=7", "trainer.max_steps=1", "trainer.optim.lr=3", "+foo=1", "task.regularizer.kinetic=0.5")],
])
def test_switches_that_do_not_fit_the_checkpoint_are_refused(trained, tmp_path, capsys, override, expected):
    code, payload = _eval(trained, tmp_path / "ev", override)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and err == [f"nodex: error: {expected}"]
    assert payload is None
