"""Sweeps that claim their dir and account for every job, with the basic launcher in this process (no shared
Slurm node, Ray or joblib pool: these run beside the launcher tests, not in their xdist group): a re-run sweep's
jobs refused one by one, two racing claims, glob and eval/plot sweeps that fail, subdirs that leave the sweep dir."""

from __future__ import annotations

import json

import pytest

from test_sweep_ledger import JOB_SUBDIR, SMALL, _claim_at_once, hold_lock, summary_line


@pytest.mark.slow
def test_a_sweep_run_again_into_its_dir_is_refused_job_by_job_and_says_where_a_new_one_goes(cli, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}", JOB_SUBDIR]
    assert cli(args)[0] == 0
    records = {p: p.read_bytes() for p in sorted(sweep.glob("job*/result.json"))}
    code, out, err = cli(args)
    assert code == 1 and summary_line(0, 2, sweep, "2 refused") in out
    for num in (0, 1):
        assert (f"nodex: job {num} refused: {sweep / f'job{num}'} already holds a trained run (checkpoints/best.pt); "
                "continue it with trainer.resume=auto, or start a new run in another hydra.sweep.dir") in out
    assert err.strip().splitlines()[-1] == "nodex: error: 2 job(s) refused; see the lines above"
    assert {p: p.read_bytes() for p in records} == records and len(records) == 2


@pytest.mark.slow
@pytest.mark.parametrize("stale", [False, True])
def test_two_sweeps_claiming_one_dir_at_once_never_both_get_it(tmp_path, stale):
    """A race on an explicit sweep dir, fresh or with a dead sweep's lock record in it: one claim wins every
    trial (with the record-based lock, both won 16 of 60 fresh and 17 of 40 stale trials)."""
    for trial in range(8):
        sweep = tmp_path / f"sweep{trial}"
        if stale:
            hold_lock(sweep / ".nodex" / "sweep.lock", 2**22 + 7)
        procs = _claim_at_once(sweep, 2, 0.5)
        answers = sorted(proc.stdout.readline().strip() for proc in procs)
        for proc in procs:
            proc.wait(timeout=30)
        assert answers == ["claimed", "refused"], (trial, answers)


@pytest.mark.slow
def test_a_glob_sweep_plans_its_jobs_and_fails_with_a_failed_job(cli, tmp_path):
    """``glob(...)`` over a config group needs Hydra's config loader to list its options: the plan counts them and
    a failed job fails the sweep (the plan used to fail in a warning, and the exit code was 0)."""
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "solver=glob([euler,midpoint])", "solver.step_size=0.5,-1",
                          f"hydra.sweep.dir={sweep}"])
    assert code == 1 and summary_line(2, 4, sweep, "2 failed") in out
    assert json.loads((sweep / ".nodex" / "plan.json").read_text()) == {"jobs": 4}
    assert "raised HydraException" not in err and err.strip().splitlines()[-1].startswith("nodex: error: 2 job(s) failed")


@pytest.mark.slow
def test_a_sweeper_that_refuses_its_overrides_leaves_no_sweep_lock(cli, tmp_path):
    sweep = tmp_path / "sweep"
    code, _, err = cli(["train", "-m", *SMALL, "trainer.optim.lr=interval(0.001,0.1)", f"hydra.sweep.dir={sweep}"])
    assert code == 2 and "INTERVAL_SWEEP" in err
    assert not (sweep / ".nodex" / "sweep.lock").exists()


@pytest.mark.slow
def test_eval_and_plot_sweeps_count_a_failed_job_and_fail(cli, tmp_path):
    """An eval or plot job keeps no result.json: its failure reaches the ledger from the job itself (they were
    counted as completed and the sweep exited 0)."""
    run = tmp_path / "run"
    assert cli(["train", *SMALL, f"hydra.run.dir={run}"])[0] == 0
    evals = tmp_path / "evals"
    code, out, err = cli(["eval", "-m", f"ckpt={run}", "solver.rtol=1e-3,0", f"hydra.sweep.dir={evals}", JOB_SUBDIR])
    assert code == 1
    assert (f"nodex: sweep finished: 1/2 jobs completed in {evals} (metrics: {evals}/*/eval.json); "
            "not completed: 1 failed") in out
    assert "nodex: job 1 failed: solver.rtol=0.0 must be positive" in out
    assert err.strip().splitlines()[-1] == "nodex: error: 1 job(s) failed; see the lines above"
    assert (evals / "job0" / "eval.json").is_file() and not (evals / "job1" / "eval.json").exists()
    plots = tmp_path / "plots"
    code, out, err = cli(["plot", "-m", f"ckpt={run}", "figures=decision_map,nosuch", f"out={tmp_path}/fig",
                          f"hydra.sweep.dir={plots}", JOB_SUBDIR])
    assert code == 1 and "1/2 jobs completed" in out and "nodex: job 1 failed: figures=nosuch is not a figure" in out


@pytest.mark.slow
@pytest.mark.parametrize("subdir, resolved", [("${oc.env:NODEX_TEST_ESCAPE}", "{tmp}/escaped"),
                                              ("${hydra.runtime.cwd}/job${hydra.job.num}", "{cwd}/job0")])
def test_a_subdir_that_leaves_the_sweep_dir_through_an_interpolation_is_refused(cli, tmp_path, monkeypatch, subdir,
                                                                                resolved):
    """The text check passed these, and the job ran outside the sweep dir (exit 0, nodex report found nothing)."""
    monkeypatch.setenv("NODEX_TEST_ESCAPE", str(tmp_path / "escaped"))
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "seed=0", f"hydra.sweep.dir={sweep}", f"hydra.sweep.subdir={subdir}"])
    shown = resolved.format(tmp=tmp_path, cwd=tmp_path)
    assert code == 1 and err.strip().splitlines() == [
        f"nodex: error: hydra.sweep.subdir={shown} leaves the sweep dir; give a relative name without '..' (the "
        "default is ${hydra.job.num}-${nodex_dirname:${hydra.job.override_dirname}})"]
    assert not list(tmp_path.rglob("result.json")) and not (tmp_path / "escaped").exists()
