"""Honest sweeps and one-line failures at the CLI: a sweep counts only its own jobs, keeps every job dir inside
the sweep dir, and whatever stops it prints the summary line and exits 1; an exception nodex did not raise
itself ends in one line with the traceback in the job's log."""

from __future__ import annotations

import json

import pytest
from conftest import FAST

from nodex.sweeps import dirname_safe

SMALL = [*FAST, "trainer.max_steps=2"]


def test_dirname_safe_escapes_path_separators_reversibly():
    assert dirname_safe("data.root=../../x") == "data.root=..%2F..%2Fx"
    assert dirname_safe("a%2Fb/c") == "a%252Fb%2Fc"


def test_dirname_safe_cuts_a_long_override_list_to_a_unique_folder_name():
    many = ",".join(f"trainer.key_{i}=value_{i}" for i in range(20))
    name = dirname_safe(many)
    assert len(name.encode()) == 200 and name.startswith(many[:150]) and "/" not in name
    assert name != dirname_safe(many.replace("value_19", "value_20"))  # the hash tells them apart
    assert dirname_safe("é" * 150).encode().decode() == dirname_safe("é" * 150)  # never cut inside a character


@pytest.mark.slow
def test_a_rerun_into_an_old_sweep_dir_counts_only_its_own_jobs(cli, tmp_path):
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    code, out, err = cli(["train", "-m", *SMALL, "seed=2", f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    assert f"sweep finished: 1/1 jobs completed in {sweep}" in out
    assert len(list(sweep.glob("*/result.json"))) == 3  # the first sweep's two jobs are still there, not counted


@pytest.mark.slow
def test_job_dirs_name_the_seed_and_stay_inside_the_sweep_dir(cli, tmp_path):
    sweep = tmp_path / "deep" / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1", "+data.note=../../escape", f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    jobs = sorted(p.parent for p in tmp_path.rglob("result.json"))
    assert len(jobs) == 2 and all(j.parent == sweep for j in jobs)
    assert ["seed=0" in j.name for j in jobs] == [True, False] and "seed=1" in jobs[1].name
    assert "%2F" in jobs[0].name


@pytest.mark.slow
def test_an_unexpected_exception_is_one_line_with_the_traceback_in_train_log(cli, tmp_path, monkeypatch):
    import nodex.train.run

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(nodex.train.run, "run_train", broken)
    run_dir = tmp_path / "run"
    code, out, err = cli(["train", *SMALL, f"hydra.run.dir={run_dir}"])
    assert code == 1
    assert err.strip() == "nodex: error: RuntimeError: disk on fire"
    assert "Traceback (most recent call last)" in (run_dir / "train.log").read_text()
    monkeypatch.setenv("NODEX_DEBUG", "1")
    code, out, err = cli(["train", *SMALL, f"hydra.run.dir={run_dir}"])
    assert code == 1 and "Traceback (most recent call last)" in err and "in broken" in err


@pytest.mark.slow
def test_an_unexpected_exception_in_a_sweep_job_is_counted_and_the_sweep_goes_on(cli, tmp_path, monkeypatch):
    import nodex.train.run

    original = nodex.train.run.run_train

    def flaky(cfg, run_dir, **kwargs):
        if int(cfg.seed) == 1:
            raise RuntimeError("flaky node")
        return original(cfg, run_dir, **kwargs)

    monkeypatch.setattr(nodex.train.run, "run_train", flaky)
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1,2", f"hydra.sweep.dir={sweep}"])
    assert code == 1
    assert f"sweep finished: 2/3 jobs completed in {sweep}" in out and "1 job(s) failed" in err
    failed = [json.loads(p.read_text()) for p in sweep.glob("*seed=1*/result.json")]
    assert [(r["status"], r["error"], r["seed"]) for r in failed] == [("failed", "RuntimeError: flaky node", 1)]


@pytest.mark.slow
def test_a_launcher_failure_still_prints_the_summary_and_exits_1(cli, tmp_path, monkeypatch):
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    original = BasicLauncher.launch

    def killed_after_one(self, job_overrides, initial_job_idx):
        original(self, job_overrides[:1], initial_job_idx)
        raise RuntimeError("worker killed by the scheduler")

    monkeypatch.setattr(BasicLauncher, "launch", killed_after_one)
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert code == 1
    assert f"sweep finished: 1/1 jobs completed in {sweep}" in out
    assert "the sweep stopped: RuntimeError: worker killed by the scheduler" in err


@pytest.mark.slow
def test_an_unknown_key_in_a_sweep_is_a_usage_error_before_any_job_runs(cli, tmp_path):
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "solver.nope=1,2", f"hydra.sweep.dir={sweep}"])
    assert code == 2 and err.strip().splitlines() == [err.strip()]
    assert "unknown config key 'solver.nope'" in err and not list(sweep.rglob("result.json"))


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["eval"], "nodex eval needs ckpt=RUN_DIR"),
    (["train", "-m", "model=vanilla,nope"], "unknown model 'nope'; choose one of:"),
    (["train", "hydra/launcher=nope"], "unknown hydra/launcher 'nope'; choose one of: basic"),
    (["train", "model=[a"], "cannot parse overrides"),
])
def test_command_line_mistakes_are_one_line(cli, tmp_path, args, message):
    code, out, err = cli([*args, f"hydra.run.dir={tmp_path / 'x'}"])
    assert code in (1, 2) and err.strip().splitlines() == [err.strip()], err
    assert message in err
    result = tmp_path / "x" / "result.json"
    assert not result.exists() or json.loads(result.read_text())["status"] == "failed"


def test_local_workers_reads_the_launcher(monkeypatch):
    import os

    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from nodex.sweeps import local_workers

    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    make = lambda mode, target, n: OmegaConf.create({"mode": mode, "launcher": {"_target_": target, "n_jobs": n}})  # noqa: E731
    assert local_workers(make(RunMode.MULTIRUN, joblib, 2)) == 2
    assert local_workers(make(RunMode.MULTIRUN, joblib, -1)) == 3
    assert local_workers(make(RunMode.RUN, joblib, 2)) == 1
    assert local_workers(make(RunMode.MULTIRUN, "hydra._internal.core_plugins.basic_launcher.BasicLauncher", 5)) == 1
