"""scripts/reproduce.py: budgets applied per experiment, claims judged into REPRODUCTION.md, and
the smoke budget end to end on a small subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nodex.paper.experiments import discover
from nodex.paper.reproduce import BUDGETS, applicable, plan, reproduce_main

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_apply_only_where_the_key_exists_and_caps_only_shrink():
    cfg = OmegaConf.create({"data": {"n_train": 1024, "n_val": 10, "n_test": None}, "trainer": {"max_steps": 300}})
    out = applicable(cfg, ["data.n_train<=64", "data.n_val<=32", "data.n_test<=64", "data.noise=0.2",
                           "trainer.max_steps=3", "solver=rk4", "hydra.sweep.subdir=x"])
    assert out == ["data.n_train=64", "data.n_test=64", "trainer.max_steps=3", "solver=rk4", "hydra.sweep.subdir=x"]


@pytest.mark.slow  # composes every experiment once (~0.3 s each)
def test_every_paper_experiment_is_planned_from_the_files():
    jobs, others = plan(BUDGETS["smoke"])
    labels = {j.label for j in jobs}
    papers = {e.name for e in discover() if "paper" in e.description.lower()}
    assert papers <= labels and not others
    assert {"galerkin_tracking@depth_none", "galerkin_tracking@depth_concat"} <= labels
    by = {j.label: j for j in jobs}
    for job in jobs:
        if job.experiment.startswith("table1_"):  # MNIST / CIFAR-10 files: full budget only
            assert job.skip and "reads dataset files" in job.skip
        else:
            assert job.skip is None, (job.label, job.skip)
            assert "trainer.max_steps=3" in job.overrides and "trainer.epochs=null" in job.overrides
    assert "solver.method=rk4" in by["digits_node"].overrides and "solver.method=rk4" not in by["reflection_vanilla"].overrides
    assert "data.n_train=64" in by["reflection_vanilla"].overrides
    assert by["galerkin_tracking@depth_none"].overrides[-1] == "model.field.depth=none"
    full, _ = plan(BUDGETS["full"], only=["table1_*", "reflection_vanilla"])
    assert all(j.skip is None and j.overrides == [] for j in full) and len(full) == 9
    extra, _ = plan(BUDGETS["cpu"], only=["reflection_vanilla"], extra=["trainer.device=cpu", "data.no_such_key=1"])
    assert extra[0].overrides == ["trainer.device=cpu"]


def _fake_result(out: Path, label: str, seed: int, metrics: dict, params: int, status: str = "completed", error=None) -> None:
    run = out / label / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({
        "status": status, "error": error, "metrics": metrics, "nfe_forward": 20.0, "nfe_backward": 0.0,
        "params": params, "wall_time_s": 3.0, "seed": seed, "config": {"experiment_name": label.split("@")[0]},
    }))


def test_claims_are_judged_from_the_runs(tmp_path, capsys):
    out = tmp_path / "runs"
    _fake_result(out, "reflection_data_control", 0, {"test/mse": 2e-4}, 257)
    _fake_result(out, "reflection_data_control", 1, {"test/mse": 4e-4}, 257)
    _fake_result(out, "reflection_vanilla", 0, {"test/mse": 0.33}, 193)
    _fake_result(out, "reflection_depthcat", 0, {"test/mse": 0.05}, 257)  # would be a FAIL of "depth-cat fails"
    _fake_result(out, "reflection_adaptive_depth", 0, {}, 195, status="failed", error="step 7: solver failed")
    report = tmp_path / "R.md"
    code = reproduce_main(["--budget", "cpu", "--only", "reflection_*", "--out", str(out), "--report-only", "--report", str(report)])
    assert code == 1  # a failed run
    text = report.read_text()
    assert "| data-controlled fits (test MSE) | fits | 0.0003 ± 0.00014 (n=2) | ≤ 0.001 | PASS |" in text
    assert "| data-controlled params | 257 | 257 (n=2) | exactly 257 | PASS |" in text
    assert "| vanilla fails (test MSE) | fails | 0.33 | ≥ 0.1 | PASS |" in text
    assert "| depth-concat fails (test MSE) | fails | 0.05 | ≥ 0.1 | FAIL |" in text
    assert "| adaptive depth fits (test MSE) | fits | not run | ≤ 0.001 | FAIL (every run failed: reflection_adaptive_depth) |" in text
    assert "not run: not selected (--only)" in text  # e.g. the annuli claims
    assert "| reflection_data_control | 2/2 | test/mse | 0.0003 ± 0.00014 |" in text
    assert "step 7: solver failed" in text and "Budget **cpu**" in text
    assert "**3 checks pass, 2 fail," in text


@pytest.mark.slow
def test_smoke_budget_end_to_end_on_two_experiments(tmp_path):
    out, report = tmp_path / "runs", tmp_path / "REPRODUCTION.md"
    proc = subprocess.run(
        [sys.executable, "scripts/reproduce.py", "--budget", "smoke", "--only", "reflection_vanilla,reflection_data_control",
         "--jobs", "2", "--out", str(out), "--report", str(report)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert sum("1/1 completed" in ln for ln in lines) == 2  # one progress line per experiment
    for label, params in (("reflection_vanilla", 193), ("reflection_data_control", 257)):
        result = json.loads((out / label / "seed0" / "result.json").read_text())
        assert result["status"] == "completed" and result["steps"] == 3 and result["params"] == params
        assert result["config"]["data"]["n_train"] == 64 and result["config"]["experiment_name"] == label
    text = report.read_text()
    assert "| data-controlled params | 257 | 257 | exactly 257 | PASS |" in text
    assert "| reflection_vanilla | 1/1 | test/mse |" in text
    assert "Made with `python scripts/reproduce.py --budget smoke --only reflection_vanilla,reflection_data_control" in text
