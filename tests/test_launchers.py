"""Sweeps on Hydra's launchers and sweeper: 2-job multiruns through joblib, a local Ray, and
submitit on a real single-node Slurm (scripts/slurm_local.sh); an Optuna search that optimises
a metric from result.json; failed jobs reported whichever launcher ran them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FAST

from nodex.train.checkpoint import load_checkpoint

# one worker runs these one after another (pyproject: --dist loadgroup): they share the machine's one Slurm node,
# a local Ray and joblib pools, and time their bounded waits
pytestmark = pytest.mark.xdist_group("launchers")

ROOT = Path(__file__).resolve().parents[1]
TWO_JOBS = [*FAST, "trainer.max_steps=5", "trainer.num_threads=1", "logger.tensorboard=false", "model=vanilla,depthcat"]
TARGETS = {
    "basic": "hydra_plugins.nodex_launchers.BasicLauncher",
    "joblib": "hydra_plugins.nodex_launchers.JoblibLauncher",
    "slurm": "hydra_plugins.nodex_launchers.SlurmLauncher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "ray": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
}


def results(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]


def job_hydra(sweep: Path) -> list[dict]:
    return [yaml.safe_load(p.read_text())["hydra"] for p in sorted(sweep.glob("*/.hydra/hydra.yaml"))]


def assert_two_jobs_completed(sweep: Path, launcher: str) -> list[dict]:
    res = results(sweep)
    assert [r["status"] for r in res] == ["completed", "completed"], [r["error"] for r in res]
    assert sorted(r["config"]["model"]["name"] for r in res) == ["depthcat", "vanilla"]
    assert all(r["steps"] == 5 for r in res)
    hydra = job_hydra(sweep)
    assert [h["launcher"]["_target_"] for h in hydra] == [TARGETS[launcher]] * 2
    return hydra


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(TARGETS))
def test_launcher_configs_compose_against_the_plugins(cli, launcher):
    code, out, err = cli(["train", f"hydra/launcher={launcher}", "--cfg", "hydra", "-p", "hydra.launcher"])
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["_target_"] == TARGETS[launcher]
    assert "is validated against ConfigStore schema" not in err


def test_a_missing_plugin_is_one_line_naming_the_extra(cli, monkeypatch):
    import nodex.sweeps

    monkeypatch.setattr(nodex.sweeps, "_installed", lambda module: False)
    code, _, err = cli(["train", "--multirun", "hydra/launcher=ray", "model=vanilla,depthcat"])
    assert code == 2 and err.strip() == ("nodex: error: hydra/launcher=ray needs the 'ray' extra "
                                         "(hydra_plugins.hydra_ray_launcher is not installed): pip install 'nodex[ray]'")
    code, _, err = cli(["train", "--multirun", "hparams_search=annuli_optuna"])
    assert code == 2 and "pip install 'nodex[optuna]'" in err


@pytest.mark.slow
def test_a_launcher_typo_is_one_line_with_the_choices(cli):
    code, _, err = cli(["train", "--multirun", "hydra/launcher=jobblib", "model=vanilla,depthcat"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("nodex: error: unknown hydra/launcher 'jobblib'; choose one of: basic, joblib, ray")
    assert all(name in err for name in ("slurm", "submitit_local"))


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_workers_and_a_failed_one_never_stops_the_sweep(cli, tmp_path):
    # one pool for both points (a pool's workers each import torch: ~8 s): 4 jobs, the two with rtol=-1 fail
    sweep = tmp_path / "joblib"
    code, out, err = cli(["train", "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TWO_JOBS,
                          "solver.rtol=1e-4,-1", f"hydra.sweep.dir={sweep}"])
    assert code == 1 and "2 job(s) failed; see result.json in:" in err and str(sweep) in err
    res = results(sweep)
    done = [r for r in res if r["status"] == "completed"]
    assert sorted(r["config"]["model"]["name"] for r in done) == ["depthcat", "vanilla"]
    assert all(r["steps"] == 5 and r["config"]["solver"]["rtol"] == 1e-4 for r in done)
    failed = [r for r in res if r["status"] == "failed"]
    assert len(failed) == 2 and all("solver.rtol" in r["error"] for r in failed)
    hydra = job_hydra(sweep)
    assert [h["launcher"]["_target_"] for h in hydra] == [TARGETS["joblib"]] * 4 and hydra[0]["launcher"]["n_jobs"] == 2
    assert f"nodex: sweep finished: 2/4 jobs completed in {sweep}" in out


@pytest.mark.slow
def test_ray_started_locally_runs_two_jobs(cli, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is part of nodex[dev]")
    sweep = tmp_path / "ray"
    try:
        code, out, err = cli(["train", "--multirun", "hydra/launcher=ray", "hydra.launcher.ray.init.num_cpus=2",
                              *TWO_JOBS, f"hydra.sweep.dir={sweep}"])
        assert code == 0, err
        assert ray.is_initialized()  # the launcher started a local Ray in this process
        hydra = assert_two_jobs_completed(sweep, "ray")
        assert hydra[0]["launcher"]["ray"]["remote"] == {"num_cpus": 1, "num_gpus": 0}
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def slurm():
    """A single-node Slurm on loopback (installed and started by scripts/slurm_local.sh when
    this runs as root with apt-get; otherwise the test is skipped with the script's reason)."""
    if shutil.which("bash") is None:
        pytest.skip("Slurm unavailable: no bash to run scripts/slurm_local.sh")
    try:
        proc = subprocess.run(["bash", "scripts/slurm_local.sh", "start"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("Slurm unavailable: scripts/slurm_local.sh start took over 600 s")
    message = (proc.stdout.strip().splitlines() or ["slurm: unavailable: no output"])[-1]
    if proc.returncode != 0:
        pytest.skip(f"Slurm could not start here ({message})")
    yield message
    if message == "slurm: started":  # leave the machine as we found it
        subprocess.run(["bash", "scripts/slurm_local.sh", "stop"], cwd=ROOT, capture_output=True, timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the slurm fixture may install Slurm first (up to 600 s, then a skip)
def test_submitit_runs_two_jobs_on_a_real_slurm(cli, tmp_path, slurm):
    sweep = tmp_path / "slurm"
    code, out, err = cli(["train", "--multirun", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                          "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
                          "hydra.launcher.poll_s=0.5", *TWO_JOBS, f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    hydra = assert_two_jobs_completed(sweep, "slurm")
    job_ids = [h["job"]["id"] for h in hydra]
    assert all(re.fullmatch(r"\d+_[01]", j) for j in job_ids), job_ids  # a Slurm job array: ARRAYID_INDEX
    for job_id in job_ids:  # submitit's logs of each Slurm job
        assert (sweep / ".submitit" / job_id / f"{job_id}_0_log.out").exists()


# 300 rk4 steps on fresh batches: long enough (seconds) to be caught mid-run (each job is watched on its own, so
# only the time from its step 50 to the signal counts), short enough for CI.
REQUEUED_RUN = ["solver=rk4", "data.n_train=256", "data.n_val=64", "data.n_test=256", "trainer.plots=false",
                "logger.tensorboard=false", "trainer.log_every=10", "trainer.val_every=100",
                "trainer.checkpoint_every=50", "trainer.max_steps=300", "trainer.num_threads=1", "seed=4",
                "trainer.resume=auto"]
REQUEUED_STEPS, REQUEUE_FROM = 300, 50
# How each job of the sweep is stopped: Slurm's own requeue (SIGTERM to the job, then back to the queue), and
# what Slurm sends before the time limit or on preemption (submitit's SIGUSR2: submitit requeues the job itself).
INTERRUPTS = {"scontrol": lambda job: ["scontrol", "requeue", job],
              "usr2": lambda job: ["scancel", "--signal=USR2", job]}


def _last_step(job_dir: Path) -> int:
    path = job_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    try:
        return json.loads(lines[-1])["step"] if lines else -1
    except ValueError:  # a line being written
        return -1


def _squeue(job: str, fmt: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", fmt], capture_output=True, text=True).stdout.strip()


def _old_step_gone(job: str, job_dir: Path) -> bool:
    """Whether nothing of ``job``'s last run is left: no step of it in squeue, no slurmstepd of it on this (the only)
    node, and the training process that held the run dir's lock has exited."""
    raw = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    raw_id = raw.split("JobId=")[1].split()[0] if "JobId=" in raw else job
    steps = subprocess.run(["squeue", "-h", "-s", "-o", "%i"], capture_output=True, text=True).stdout.split()
    if any(s.startswith((f"{job}.", f"{raw_id}.")) for s in steps):
        return False
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(f"slurmstepd: [{raw_id}.".encode()):
                return False
        except OSError:
            continue
    try:
        pid = json.loads((job_dir / ".nodex.lock").read_text())["pid"]
        os.kill(int(pid), 0)
        return False  # the old run still holds its dir
    except (OSError, ValueError, KeyError):
        return True


# slurmd refuses a job whose credential was created in the same whole second as the old run's revocation ("Job 18
# already killed, do not launch batch job", seen in slurmd.log when released 0.5 s after the old step ended)
CREDENTIAL_S = 2.0


def _requeue_job_mid_run(sweep: Path, how: str, min_step: int, seen: dict, errors: list) -> None:
    """For the job of the sweep whose experiment_name is ``how`` (one watcher thread per job, so that neither waits
    for the other's requeue): once it logged ``min_step``, interrupt it as ``how`` says, wait until Slurm holds it
    requeued (pending), its old step has ended and a new second has begun, and let it start again now (a requeued job
    is held back 2 minutes). Released earlier, Slurm may start it again at once and kill that start as "non-startable
    batch job: Job credential revoked" (the sweep then reports that job lost, before: waited forever)."""
    try:
        deadline = time.time() + 150
        while how not in seen and time.time() < deadline:
            for job_dir in sweep.glob("*/.hydra/config.yaml"):
                job_dir = job_dir.parent.parent
                name = (yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text()) or {}).get("experiment_name")
                if name != how or _last_step(job_dir) < min_step:
                    continue  # (a config.yaml being written reads as empty)
                job = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"]
                subprocess.run(INTERRUPTS[how](job), check=True, capture_output=True, timeout=30)
                seen[how] = {"job": job, "dir": job_dir, "at": _last_step(job_dir)}
                while not _squeue(job, "%t").startswith("PD") and time.time() < deadline:
                    time.sleep(0.2)
                while not _old_step_gone(job, job_dir) and time.time() < deadline:
                    time.sleep(0.2)
                time.sleep(CREDENTIAL_S)
                seen[how]["restarts"] = subprocess.run(["scontrol", "show", "job", job], capture_output=True,
                                                       text=True).stdout.split("Restarts=")[1].split()[0]
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True, timeout=30)
                break
            time.sleep(0.05)
    except Exception as exc:  # reported by the test
        errors.append(exc)


def _diagnosis(sweep: Path) -> str:
    """The sweep's ledger and the end of each job's train.log and submitit logs (for a failure message)."""
    parts = [p.read_text() for p in sorted((sweep / ".nodex" / "jobs").glob("*.json"))]
    for path in [*sorted(sweep.glob("*/train.log")), *sorted(sweep.glob(".submitit/*/*_log.*"))]:
        parts.append(f"--- {path.name}: " + "".join(path.read_text().splitlines(keepends=True)[-8:]))
    parts.append(subprocess.run(["tail", "-n", "30", "/var/log/slurm/slurmctld.log"], capture_output=True,
                                text=True).stdout)
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the slurm fixture may install Slurm first (up to 600 s, then a skip)
def test_a_slurm_job_requeued_mid_run_ends_bit_identical_to_the_uninterrupted_run(cli, tmp_path, slurm):
    # the uninterrupted run in a process of its own, beside the sweep (the cores are idle while Slurm requeues)
    uninterrupted = subprocess.Popen([sys.executable, "-m", "nodex.cli", "train", *REQUEUED_RUN,
                                      f"hydra.run.dir={tmp_path / 'whole'}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    sweep, seen, errors = tmp_path / "requeued", {}, []
    watchers = [threading.Thread(target=_requeue_job_mid_run, args=(sweep, how, REQUEUE_FROM, seen, errors),
                                 daemon=True) for how in INTERRUPTS]
    for watcher in watchers:
        watcher.start()
    code, out, err = cli(["train", "--multirun", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                          "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
                          "hydra.launcher.max_num_timeout=1", "hydra.launcher.poll_s=0.5", *REQUEUED_RUN,
                          "experiment_name=scontrol,usr2", f"hydra.sweep.dir={sweep}"])
    for watcher in watchers:
        watcher.join(timeout=30)
    _, whole_err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, whole_err
    whole = json.loads((tmp_path / "whole" / "result.json").read_text())
    whole_weights = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["model"]
    assert not errors, errors
    assert code == 0, (out, err, _diagnosis(sweep))
    assert f"nodex: sweep finished: 2/2 jobs completed in {sweep}" in out
    signals = {"scontrol": "SIGTERM", "usr2": "SIGUSR2"}
    assert sorted(seen) == sorted(INTERRUPTS)
    for how, job in seen.items():
        assert job["restarts"] == "1", job  # Slurm ran the job twice
        log = (job["dir"] / "train.log").read_text()
        stopped = re.findall(rf"STOPPED: stopped by {signals[how]} at step (\d+)", log)
        resumed = re.findall(r"resumed from \S+ at step (\d+)", log)
        assert len(stopped) == 1 and resumed == stopped and job["at"] <= int(stopped[0]) < REQUEUED_STEPS, log
        if how == "usr2":  # nodex handed the signal on to submitit, which requeued the job itself
            logs = "".join(p.read_text() for p in (sweep / ".submitit" / job["job"]).glob("*_log.*"))
            assert f"Requeued job {job['job']}" in logs, logs
        result = json.loads((job["dir"] / "result.json").read_text())
        assert result["status"] == "completed" and result["steps"] == REQUEUED_STEPS
        assert result["metrics"] == whole["metrics"]
        weights = load_checkpoint(job["dir"] / "checkpoints" / "last.pt")["model"]
        assert weights.keys() == whole_weights.keys()
        assert all(torch.equal(weights[k], whole_weights[k]) for k in weights)
        rows = [json.loads(line) for line in (job["dir"] / "metrics.jsonl").read_text().splitlines()]
        keyed = [(r["step"], tuple(sorted(r))) for r in rows]
        assert len(keyed) == len(set(keyed)) and keyed == sorted(keyed, key=lambda k: k[0])  # no step logged twice
        assert keyed[-1][0] == REQUEUED_STEPS


@pytest.mark.slow
def test_optuna_search_optimises_the_monitored_metric(cli, tmp_path):
    sweep = tmp_path / "optuna"
    code, out, err = cli(["train", "--multirun", "hparams_search=annuli_optuna", "hydra.sweeper.n_trials=2",
                          *FAST, "trainer.max_steps=5", "logger.tensorboard=false", f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    res = results(sweep)
    assert len(res) == 2 and all(r["status"] == "completed" for r in res)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    accuracies = [r["metrics"]["test/accuracy"] for r in res]
    assert best["best_value"] == pytest.approx(max(accuracies))  # the value train() returned
    winner = res[accuracies.index(max(accuracies))]["config"]
    assert best["best_params"]["trainer.optim.lr"] == pytest.approx(winner["trainer"]["optim"]["lr"])
    assert 0.001 <= winner["trainer"]["optim"]["lr"] <= 0.05
    assert json.loads(best["best_params"]["model.field.hidden"]) == winner["model"]["field"]["hidden"]
    assert winner["monitor"] == "test/accuracy"


def _cancel_one_job_once_running(sweep: Path, cancelled: list, errors: list) -> None:
    """Cancel job 1 of the sweep with scancel once it has written its first metrics."""
    try:
        deadline = time.time() + 150
        while not cancelled and time.time() < deadline:
            for job_dir in sweep.glob("1-*/metrics.jsonl"):
                job = yaml.safe_load((job_dir.parent / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"]
                subprocess.run(["scancel", job], check=True, capture_output=True, timeout=30)
                cancelled.append(job)
                break
            time.sleep(0.1)
    except Exception as exc:  # reported by the test
        errors.append(exc)


@pytest.mark.slow
def test_a_cancelled_slurm_job_ends_the_sweep_as_lost_within_the_bound(cli, tmp_path, slurm):
    """With accounting off (no sacct), submitit alone would wait for the cancelled job forever."""
    sweep, cancelled, errors = tmp_path / "cancelled", [], []
    watcher = threading.Thread(target=_cancel_one_job_once_running, args=(sweep, cancelled, errors), daemon=True)
    watcher.start()
    start = time.time()
    code, out, err = cli(["train", "--multirun", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                          "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
                          "hydra.launcher.lost_after_s=5", "hydra.launcher.poll_s=0.5", *REQUEUED_RUN,
                          "trainer.max_steps=150", "seed=0,1",
                          f"hydra.sweep.dir={sweep}"])
    watcher.join(timeout=30)
    assert not errors and cancelled, errors
    assert code == 1 and time.time() - start < 240, (out, err)
    assert (f"nodex: sweep finished: 1/2 jobs completed in {sweep} (table: nodex report {sweep}); "
            "not completed: 1 lost") in out
    assert f"nodex: job 1 lost: Slurm job {cancelled[0]} left Slurm's queue and wrote no result within 5 s" in out
