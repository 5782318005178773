"""Runs that survive what clusters do to them, end to end through the CLI: SIGTERM saves and records, a requeued
job (``trainer.resume=auto``) continues bit for bit, resume refuses a different run, one writer per run dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nodex.cli import main
from nodex.train.checkpoint import load_checkpoint, save_checkpoint

BASE = ["data.n_train=64", "data.n_val=64", "data.n_test=128", "trainer.plots=false", "logger.tensorboard=false",
        "trainer.log_every=5", "trainer.val_every=20", "trainer.checkpoint_every=20"]


def _nodex(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """``nodex train`` in its own process: for the runs a signal stops, or that must hold a run dir meanwhile."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nodex.cli", "train", *BASE, *overrides, f"hydra.run.dir={run_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _train_here(run_dir: Path, *overrides: str) -> None:
    """``nodex train`` in this process (one thread, as the subprocesses): the uninterrupted reference run and the
    requeued job, which starts from what is on disk either way; a process start (~8 s of imports) saved each."""
    assert main(["train", *BASE, *overrides, f"hydra.run.dir={run_dir}"]) == 0


def _logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if (run_dir / "member-0").is_dir():  # an ensemble: its members log
        path = run_dir / "member-0" / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _stop_after(proc: subprocess.Popen, run_dir: Path, min_step: int, signum: int) -> tuple[int, str]:
    deadline = time.time() + 120
    while (not _logged_steps(run_dir) or _logged_steps(run_dir)[-1] < min_step) and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _final(run_dir: Path) -> tuple[dict, dict]:
    result = json.loads((run_dir / "result.json").read_text())
    return result, load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


@pytest.mark.slow
@pytest.mark.parametrize("solver, signum", [("dopri5", signal.SIGTERM), ("rk4", signal.SIGKILL)])
def test_stopped_and_requeued_run_equals_the_uninterrupted_run(tmp_path, solver, signum):
    overrides = ["trainer.max_steps=80", "data.resample=true", f"solver={solver}", "trainer.resume=auto", "seed=4"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    code, err = _stop_after(_nodex(cut, *overrides), cut, 25, signum)
    if signum == signal.SIGTERM:
        assert code == 143, err
        stopped = json.loads((cut / "result.json").read_text())
        assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"]
        assert load_checkpoint(cut / "checkpoints" / "last.pt")["step"] == stopped["steps"] > 25
    else:
        assert code == -signal.SIGKILL
    _train_here(whole, *overrides)
    _train_here(cut, *overrides)  # the requeued job: same command, same dir
    (a, a_model), (b, b_model) = _final(whole), _final(cut)
    assert b["status"] == "completed" and b["metrics"] == a["metrics"]
    assert all(torch.equal(a_model[k], b_model[k]) for k in a_model)
    rows = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    keyed = [(r["step"], tuple(sorted(k for k in r if k != "step"))) for r in rows]
    assert len(keyed) == len(set(keyed)) and [s for s, _ in keyed] == sorted(s for s, _ in keyed)  # no step twice
    assert keyed[-1][0] == 80


@pytest.mark.slow
@pytest.mark.parametrize("nohup", [False, True])
def test_a_hangup_saves_and_records_like_sigterm_unless_the_run_ignores_it(tmp_path, nohup):
    """SIGHUP (the terminal closed) killed the run with no record (exit 129, nothing on stderr). Under ``nohup``
    (SIGHUP ignored) it must not stop the run."""
    overrides = ["trainer.max_steps=80", "solver=rk4", "solver.step_size=0.25"]
    ignore = (lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)) if nohup else None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nodex.cli", "train", *BASE, *overrides, f"hydra.run.dir={tmp_path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=ignore)
    code, err = _stop_after(proc, tmp_path, 25, signal.SIGHUP)
    result = json.loads((tmp_path / "result.json").read_text())
    if nohup:
        assert code == 0 and result["status"] == "completed" and result["steps"] == 80, err
        return
    assert code == 129 and result["status"] == "interrupted" and "stopped by SIGHUP" in result["error"], err
    assert err.strip().splitlines()[-1].startswith("nodex: error: stopped by SIGHUP at step ")
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == result["steps"] > 25


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_ensemble_resumes_bit_for_bit(tmp_path, signum):
    overrides = ["trainer.ensemble=2", "trainer.max_steps=80", "data.resample=true", "solver=rk4",
                 "trainer.resume=auto", "seed=4"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    code, err = _stop_after(_nodex(cut, *overrides), cut, 25, signum)
    steps = {load_checkpoint(cut / f"member-{k}" / "checkpoints" / "last.pt")["step"] for k in range(2)}
    assert len(steps) == 1 and 20 <= steps.pop() < 80  # both members saved at one step, mid-run
    if signum == signal.SIGTERM:
        stopped = json.loads((cut / "ensemble.json").read_text())
        assert code == 143 and stopped["status"] == "interrupted" and "stopped by SIGTERM" in stopped["error"], err
    else:
        assert code == -signal.SIGKILL
    _train_here(whole, *overrides)
    _train_here(cut, *overrides)  # the requeued job: same command, same dir
    a, b = (json.loads((d / "ensemble.json").read_text()) for d in (whole, cut))
    assert b["status"] == "completed" and b["member_metrics"] == a["member_metrics"] and b["metrics"] == a["metrics"]
    for k in range(2):
        (ra, wa), (rb, wb) = _final(whole / f"member-{k}"), _final(cut / f"member-{k}")
        assert rb["status"] == "completed" and rb["steps"] == 80 and rb["metrics"] == ra["metrics"]
        assert all(torch.equal(wa[name], wb[name]) for name in wa)
        logged = _logged_steps(cut / f"member-{k}")
        assert logged == sorted(logged) and logged[-1] == 80


@pytest.mark.slow
def test_resume_auto_starts_fresh_without_a_checkpoint(train_run):
    run_dir, result, code, err = train_run("trainer.resume=auto")
    assert code == 0, err and result["steps"] == 20


@pytest.mark.slow
def test_resume_refuses_a_different_run_and_applies_a_new_learning_rate(train_run):
    first, result, code, err = train_run(name="first")
    assert code == 0, err
    _, _, code, err = train_run(f"trainer.resume={first}", "model=depthcat", "seed=5", name="other")
    assert code == 1 and "trainer.resume" in err and "model" in err and "seed" in err
    resumed, result, code, err = train_run(f"trainer.resume={first}", "trainer.max_steps=30", "trainer.optim.lr=0.001",
                                           name="resumed")
    assert code == 0, err
    assert result["steps"] == 30 and result["config"]["trainer"]["optim"]["lr"] == 0.001
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["optimizer"]["param_groups"][0]["lr"] == 0.001
    assert ("trainer.optim.lr=0.001 replaces the checkpoint run's 0.005: the schedule goes on from its position at "
            "the new base rate (lr now 0.001)") in (resumed / "train.log").read_text()


@pytest.mark.slow
def test_a_second_live_run_into_the_same_dir_is_refused(tmp_path, cli):
    run_dir = tmp_path / "shared"
    first = _nodex(run_dir, "trainer.max_steps=100000")
    try:
        deadline = time.time() + 120
        while not _logged_steps(run_dir) and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        code, _, err = cli(["train", *BASE, "trainer.max_steps=5", f"hydra.run.dir={run_dir}"])
        assert code == 1 and err.strip().splitlines() == [err.strip()], err
        assert f"is in use by pid {first.pid}" in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_inside_that_epoch(tmp_path):
    overrides = ["trainer.max_steps=90", "data.resample=false", "trainer.batch_size=24", "solver=rk4",
                 "trainer.resume=auto", "trainer.checkpoint_every=7", "trainer.log_every=7"]  # 64/24: 2 batches an epoch
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    code, err = _stop_after(_nodex(cut, *overrides), cut, 20, signal.SIGKILL)
    assert code == -signal.SIGKILL, err
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["rng"]["epoch_pos"] in (1, 2)
    _train_here(whole, *overrides)
    _train_here(cut, *overrides)
    (a, a_model), (b, b_model) = _final(whole), _final(cut)
    assert b["metrics"] == a["metrics"] and all(torch.equal(a_model[k], b_model[k]) for k in a_model)


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file under ``run_dir`` with its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _completed(trained_run: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the session's completed FAST run (tests/conftest.py) as ``tmp_path / name``, as ``train_run(name=name)``
    would have trained it: for the tests that resume or change it."""
    run_dir = tmp_path / name
    shutil.copytree(trained_run, run_dir)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("changed", [["seed=5"], ["model=depthcat"]])
def test_a_refused_resume_changes_nothing_on_disk(train_run, trained_run, tmp_path, changed):
    run_dir = _completed(trained_run, tmp_path, "done")
    before = _files(run_dir)
    assert ".hydra/config.yaml" in before and "train.log" in before and "result.json" in before
    _, _, code, err = train_run("trainer.resume=auto", *changed, name="done")
    key = changed[0].split("=")[0]
    assert code == 1 and err.startswith("nodex: error: trainer.resume=") and key in err
    assert err.strip().splitlines() == [err.strip()]
    assert _files(run_dir) == before  # result.json, .hydra/, train.log, metrics.jsonl, checkpoints: all as they were


@pytest.mark.slow
def test_resume_auto_on_a_completed_run_does_nothing_and_exits_0(train_run, trained_run, tmp_path):
    run_dir = _completed(trained_run, tmp_path, "done")
    before = _files(run_dir)
    _, _, code, err = train_run("trainer.resume=auto", name="done")  # a requeued job that had already finished
    assert code == 0 and err.strip() == f"nodex: {run_dir} already completed its 20 steps; nothing to do (a larger " \
                                        "trainer.max_steps continues it)"
    assert _files(run_dir) == before  # no second test row in metrics.jsonl, no new .hydra/
    resumed, result, code, err = train_run("trainer.resume=auto", "trainer.max_steps=30", name="done")
    assert code == 0, err and result["steps"] == 30 and result["status"] == "completed"


@pytest.mark.slow
def test_resuming_a_completed_run_into_another_dir_says_how_and_creates_nothing(train_run, trained_run, tmp_path):
    first = trained_run  # only read
    _, _, code, err = train_run(f"trainer.resume={first}", name="other")
    assert code == 1 and err.strip() == (f"nodex: error: trainer.resume={first}: that run has no steps left (it ends "
                                         "at step 20); continue it with a larger trainer.max_steps (above 20)")
    _, _, code, err = train_run(f"trainer.resume={first}", "trainer.max_steps=10", name="other")
    assert code == 1 and err.strip() == (f"nodex: error: trainer.resume={first}: the checkpoint is at step 20, beyond "
                                         "this run's 10 steps; set trainer.max_steps above 20 to continue it")
    assert not (tmp_path / "other").exists()
    _, result, code, err = train_run(f"trainer.resume={first}", "trainer.max_steps=25", name="other")
    assert code == 0 and result["steps"] == 25, err


@pytest.mark.slow
def test_resume_auto_with_only_best_pt_is_refused_and_keeps_it(train_run, trained_run, tmp_path):
    run_dir = _completed(trained_run, tmp_path, "run")
    (run_dir / "checkpoints" / "last.pt").unlink()
    before = _files(run_dir)
    _, _, code, err = train_run("trainer.resume=auto", name="run")
    best = run_dir / "checkpoints" / "best.pt"
    assert code == 1 and err.strip() == (f"nodex: error: trainer.resume=auto: {run_dir} holds checkpoints/best.pt but "
                                         f"no last.pt; continue from the best one with trainer.resume={best}, or "
                                         "start over with trainer.resume=null in a new hydra.run.dir")
    assert _files(run_dir) == before
    _, result, code, err = train_run(f"trainer.resume={best}", "trainer.max_steps=30", name="run")
    assert code == 0 and result["steps"] == 30, err


@pytest.mark.slow
def test_an_ensemble_resumed_with_another_size_is_refused(train_run, tmp_path):
    ens, _, code, err = train_run("trainer.ensemble=2", "solver=rk4", name="ens")
    assert code == 0, err
    _, _, code, err = train_run("trainer.ensemble=3", "solver=rk4", f"trainer.resume={ens}", "trainer.max_steps=30",
                                name="three")
    assert code == 1 and err.strip() == (f"nodex: error: trainer.resume={ens}: that is an ensemble of 2, this run is "
                                         "trainer.ensemble=3; resume with trainer.ensemble=2")
    _, _, code, err = train_run("solver=rk4", f"trainer.resume={ens}", "trainer.max_steps=30", name="one")
    assert code == 1 and "that is an ensemble of 2, this run is trainer.ensemble=1" in err
    assert not (tmp_path / "three").exists() and not (tmp_path / "one").exists()


@pytest.mark.slow
@pytest.mark.parametrize("bad", ["trainer.optim.lr=-1", "trainer.resume=/no/such/run"])
def test_a_failed_run_releases_its_lock(train_run, bad):
    from nodex.train.lock import LOCK_NAME

    run_dir, result, code, err = train_run(bad, name="bad")
    assert code == 1 and err.strip().splitlines() == [err.strip()]
    assert not (run_dir / LOCK_NAME).exists()
    if run_dir.exists():
        assert result["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("bad, words", [
    (["trainer.val_every=-5"], "trainer.val_every=-5"),  # an allowed key's bad value, found as the run starts
    (["trainer.log_every=0"], "trainer.log_every=0"),
])
def test_a_resume_that_fails_to_start_changes_nothing_on_disk(train_run, trained_run, tmp_path, bad, words):
    run_dir = _completed(trained_run, tmp_path, "done")
    before = _files(run_dir)
    _, _, code, err = train_run("trainer.resume=auto", "trainer.max_steps=30", *bad, name="done")
    assert code == 1 and words in err and err.strip().splitlines() == [err.strip()], err
    assert _files(run_dir) == before  # result.json, .hydra/, metrics.jsonl, checkpoints: the completed run's


@pytest.mark.slow
def test_an_ensemble_with_a_corrupt_member_checkpoint_keeps_every_record(train_run, tmp_path):
    run_dir, _, code, err = train_run("trainer.ensemble=2", "solver=rk4", name="ens")
    assert code == 0, err
    last = run_dir / "member-1" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    before = _files(run_dir)
    _, _, code, err = train_run("trainer.ensemble=2", "solver=rk4", "trainer.resume=auto", "trainer.max_steps=30",
                                name="ens")
    assert code == 1 and "member-1" in err and err.strip().splitlines() == [err.strip()], err
    assert _files(run_dir) == before  # ensemble.json and both members' result.json, .hydra/ and logs


@pytest.mark.slow
def test_a_dir_holding_a_trained_run_is_written_only_by_that_run(train_run, trained_run, tmp_path):
    run_dir = _completed(trained_run, tmp_path, "done")
    other = _completed(trained_run, tmp_path, "other")
    before = _files(run_dir)
    _, _, code, err = train_run("trainer.max_steps=5", name="done")  # a new run into it
    assert code == 1 and err.strip() == (f"nodex: error: {run_dir} already holds a trained run (checkpoints/best.pt); "
                                         "continue it with trainer.resume=auto, or start a new run in another "
                                         "hydra.run.dir")
    _, _, code, err = train_run(f"trainer.resume={other}", "trainer.max_steps=30", name="done")  # another run's
    assert code == 1 and err.strip() == (f"nodex: error: trainer.resume={other} into {run_dir}, which holds another "
                                         "run (checkpoints/best.pt): resume into a new hydra.run.dir, or continue "
                                         "that run with trainer.resume=auto")
    best = run_dir / "checkpoints" / "best.pt"  # its own best.pt, behind its last.pt: would drop steps after it
    save_checkpoint({**load_checkpoint(best), "step": 10}, best)
    before, step = _files(run_dir), 10
    _, _, code, err = train_run(f"trainer.resume={best}", "trainer.max_steps=30", name="done")
    assert code == 1 and err.strip() == (f"nodex: error: trainer.resume={best} would take {run_dir} back from step 20 "
                                         f"to {step} and drop its record after it; resume from it into a new "
                                         "hydra.run.dir (or continue with trainer.resume=auto)")
    assert _files(run_dir) == before
    _, result, code, err = train_run(f"trainer.resume={best}", "trainer.max_steps=30", name="elsewhere")
    assert code == 0 and result["steps"] == 30, err


def test_a_resumed_log_replaces_the_killed_runs_later_tensorboard_steps(tmp_path, monkeypatch):
    """A run killed after its checkpoint at step 10 had logged steps 15 and 20; the resumed run logs them again:
    TensorBoard shows each step once, with the resumed run's values (as metrics.jsonl keeps one row per step)."""
    import time

    from nodex.train.logs import RunLogger
    from tests.conftest import read_scalars

    first = RunLogger(tmp_path, tensorboard=True)
    for step in (5, 10, 15, 20):
        first.scalars(step, {"train/loss": float(step)})
    first.close()
    # the resumed run is a later process: its event file is named by a later second. In one test process both files
    # would share the second and sort by torch's per-process writer counter ("...pid.10" before "...pid.9": flaky)
    later = time.time() + 5
    monkeypatch.setattr(time, "time", lambda: later)
    resumed = RunLogger(tmp_path, tensorboard=True, append=True, keep_until=10)
    for step in (15, 20, 25):
        resumed.scalars(step, {"train/loss": -float(step)})
    resumed.close()
    assert read_scalars(tmp_path)["train/loss"] == [(5, 5.0), (10, 10.0), (15, -15.0), (20, -20.0), (25, -25.0)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train/loss"]) for r in rows] == [(5, 5.0), (10, 10.0), (15, -15.0), (20, -20.0),
                                                            (25, -25.0)]
