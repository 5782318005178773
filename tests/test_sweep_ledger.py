"""A sweep that never lies or hangs: it claims its dir, counts the jobs it planned (not the files it finds), reports
each as completed / failed / refused / stopped / lost / not run, and exits non-zero unless all completed; a launcher
job that vanished ends as lost within a bounded time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FAST

from nodex.launchers import in_queue, wait_for_jobs
from nodex.sweep_ledger import check_subdir, claim_sweep_dir, read_entries

# one worker runs these one after another (pyproject: --dist loadgroup): they share the machine's one Slurm node,
# a local Ray and joblib pools, and time their bounded waits
pytestmark = pytest.mark.xdist_group("launchers")

SMALL = [*FAST, "trainer.max_steps=2", "logger.tensorboard=false"]
JOB_SUBDIR = "hydra.sweep.subdir=job${hydra.job.num}"  # job dirs named job0, job1...


def summary_line(done: int, total: int, sweep: Path, not_completed: str) -> str:
    return (f"nodex: sweep finished: {done}/{total} jobs completed in {sweep} (table: nodex report {sweep}); "
            f"not completed: {not_completed}")


@pytest.fixture
def live_pid():
    """The pid of a live process that is not this one (a lock holder)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def run_lock_holder(tmp_path):
    """``hold(run_dir) -> pid``: a live process that holds ``run_dir``'s run lock (an flock) until the test ends."""

    def start(run_dir: Path) -> subprocess.Popen:
        run_dir.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([sys.executable, "-c", "import sys, time; from nodex.train.lock import RunLock; "
                                 "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
                                 str(run_dir)], stdout=subprocess.PIPE, text=True)

    yield from _holding(start, "held")


def _holding(start, ready: str):
    """A fixture's ``hold(path) -> pid``: ``start(path)`` a process, wait for its ``ready`` line; all killed at the
    end of the test."""
    holders = []

    def hold(path: Path) -> int:
        proc = start(path)
        holders.append(proc)
        assert proc.stdout.readline().strip() == ready
        return proc.pid

    yield hold
    for proc in holders:
        proc.kill()
        proc.wait()


def hold_lock(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": time.time()}))


# ---------------------------------------------------------------------------------------------- claiming


def test_a_taken_default_sweep_dir_gets_a_suffix_and_two_claims_never_share_one(tmp_path):
    default = tmp_path / "multirun" / "2026-12-07" / "09-00-00"
    claimed = []
    threads = [threading.Thread(target=lambda: claimed.append(claim_sweep_dir(str(default), explicit=False)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in claimed) == ["09-00-00", "09-00-00-1", "09-00-00-2", "09-00-00-3"]


CLAIM = ("import sys, time; from nodex.sweep_ledger import claim_sweep_dir, SweepRefused\n"
         "sys.stdout.write('ready\\n'); sys.stdout.flush(); go = float(sys.stdin.readline())\n"
         "while time.time() < go: pass\n"
         "try:\n    claim_sweep_dir(sys.argv[1], explicit=True); print('claimed', flush=True)\n"
         "except SweepRefused:\n    print('refused', flush=True)\n"
         "time.sleep(float(sys.argv[2]))\n")


def _claim_at_once(sweep: Path, n: int, hold_s: float) -> list[subprocess.Popen]:
    """``n`` processes that claim ``sweep`` at the same instant (a shared start time), each holding what it got for
    ``hold_s`` seconds."""
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(sweep), str(hold_s)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    go = time.time() + 0.3
    for proc in procs:
        proc.stdin.write(f"{go}\n")
        proc.stdin.flush()
    return procs


@pytest.fixture
def sweep_holder(tmp_path):
    """``hold(sweep) -> pid``: a live process that claimed ``sweep`` as a sweep does, until the test ends."""
    yield from _holding(lambda sweep: _claim_at_once(sweep, 1, 120.0)[0], "claimed")


@pytest.mark.slow
def test_an_explicit_sweep_dir_held_by_a_live_sweep_is_refused_in_one_line(cli, tmp_path, sweep_holder):
    sweep = tmp_path / "sweep"
    live_pid = sweep_holder(sweep)
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert code == 1 and not list(sweep.glob("*/result.json"))
    assert err.strip() == (f"nodex: error: {sweep} is in use by a live sweep (pid {live_pid} on {socket.gethostname()})"
                           ": wait for it to end or choose another hydra.sweep.dir")


@pytest.mark.slow
def test_a_stale_sweep_lock_is_taken_over_and_an_old_ledger_is_not_counted(cli, tmp_path):
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    hold_lock(sweep / ".nodex" / "sweep.lock", 2**22 + 7)  # a pid that does not exist: its sweep died
    code, out, err = cli(["train", "-m", *SMALL, "seed=2", f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    assert f"nodex: sweep finished: 1/1 jobs completed in {sweep}" in out
    assert sorted(read_entries(sweep)) == [0] and not (sweep / ".nodex" / "sweep.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("subdir", ["../../x", "/tmp/elsewhere", "a/../../b"])
def test_a_subdir_that_leaves_the_sweep_dir_is_refused(cli, tmp_path, subdir):
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}",
                          f"hydra.sweep.subdir={subdir}"])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"nodex: error: hydra.sweep.subdir={subdir} leaves the sweep dir; give a relative name")
    assert not list(tmp_path.rglob("result.json"))
    check_subdir("${hydra.job.num}-x")  # the default shape passes


@pytest.mark.slow
def test_a_sweep_from_a_dir_it_cannot_write_names_hydra_sweep_dir(cli, tmp_path, monkeypatch):
    (tmp_path / "outputs").write_text("a file where the outputs folder would go")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1"])
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("nodex: error: cannot create the sweep dir outputs/train/multirun/")
    assert err.strip().endswith("run from a writable directory or set hydra.sweep.dir=A/WRITABLE/DIR")


# ---------------------------------------------------------------------------------------------- accounting


@pytest.mark.slow
def test_a_job_refused_by_the_run_lock_is_counted_as_refused_and_fails_the_sweep(cli, tmp_path, run_lock_holder):
    sweep = tmp_path / "sweep"
    live_pid = run_lock_holder(sweep / "job0")  # a live run writes into job 0's dir
    code, out, err = cli(["train", "-m", *SMALL, "seed=0,1", f"hydra.sweep.dir={sweep}", JOB_SUBDIR])
    assert code == 1
    assert summary_line(1, 2, sweep, "1 refused") in out
    assert f"nodex: job 0 refused: its dir is in use by pid {live_pid}" in out
    assert [e["state"] for _, e in sorted(read_entries(sweep).items())] == ["refused", "completed"]


@pytest.mark.slow
def test_a_one_job_sweep_refused_by_the_run_lock_says_so(cli, tmp_path, run_lock_holder):
    sweep = tmp_path / "sweep"
    run_lock_holder(sweep / "job0")
    code, out, err = cli(["train", "-m", *SMALL, "seed=0", f"hydra.sweep.dir={sweep}", JOB_SUBDIR])
    assert code == 1 and summary_line(0, 1, sweep, "1 refused") in out
    assert err.strip().splitlines()[-1] == "nodex: error: 1 job(s) refused; see the lines above"


@pytest.mark.slow
def test_a_failed_job_is_counted_with_its_reason(cli, tmp_path):
    sweep = tmp_path / "sweep"
    code, out, err = cli(["train", "-m", *SMALL, "solver.rtol=1e-4,-1", f"hydra.sweep.dir={sweep}"])
    assert code == 1 and summary_line(1, 2, sweep, "1 failed") in out
    entries = read_entries(sweep)
    assert entries[0]["state"] == "completed" and entries[1]["state"] == "failed"
    assert "solver.rtol" in entries[1]["reason"]


# ---------------------------------------------------------------------------------------------- bounded waits


class FakeJob:
    def __init__(self, job_id: str, folder: Path, value: object = None) -> None:
        self.job_id, self.value = job_id, value
        self.paths = type("Paths", (), {"result_pickle": folder / f"{job_id}_result.pkl"})()

    def results(self) -> list:
        return [self.value]


@pytest.mark.slow
def test_a_job_that_left_the_queue_without_a_result_is_lost_within_the_bound(tmp_path):
    sweep = tmp_path / "sweep"
    done, cancelled, queued_then_gone = (FakeJob(j, tmp_path, value=j) for j in ("7_0", "7_1", "7_2"))
    done.paths.result_pickle.write_text("x")
    calls = []

    def queue(ids):
        calls.append(list(ids))
        return {"7_2": ("RUNNING", "None")} if len(calls) <= 3 else {}  # 7_1 was never seen; 7_2 goes after 3 polls

    start = time.monotonic()
    returns = wait_for_jobs([done, cancelled, queued_then_gone], [["a=0"], ["a=1"], ["a=2"]], 0, sweep,
                            lost_after_s=0.3, poll_s=0.05, queue=queue)
    assert time.monotonic() - start < 3
    assert returns[0] == "7_0" and [r.overrides for r in returns[1:]] == [["a=1"], ["a=2"]]
    entries = read_entries(sweep)
    assert sorted(entries) == [1, 2] and all(e["state"] == "lost" for e in entries.values())
    assert entries[1]["reason"] == "Slurm job 7_1 left Slurm's queue and wrote no result within 0.3 s"


@pytest.mark.slow
def test_squeue_silence_waits_ten_times_longer_and_a_held_launch_failure_is_out_of_the_queue(tmp_path):
    job = FakeJob("9", tmp_path)
    start = time.monotonic()
    wait_for_jobs([job], [["a=0"]], 0, tmp_path, lost_after_s=0.05, poll_s=0.02, queue=lambda ids: None)
    assert 0.5 <= time.monotonic() - start < 3
    assert "not seen (squeue did not answer)" in read_entries(tmp_path)[0]["reason"]
    assert in_queue(("PENDING", "BeginTime")) and in_queue(("COMPLETING", "None"))
    assert not in_queue(("PENDING", "launch failed requeued held")) and not in_queue(("CANCELLED", "None"))


# ---------------------------------------------------------------------------------------------- signals, dead workers


def _sweep_process(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "nodex.cli", "train", "-m", *overrides], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


LONG = ["solver=rk4", "data.n_train=128", "data.n_val=64", "data.n_test=64", "trainer.plots=false",
        "logger.tensorboard=false", "trainer.log_every=5", "trainer.val_every=1000", "trainer.checkpoint_every=1000",
        "trainer.max_steps=3000", "trainer.num_threads=1"]


@pytest.mark.slow
def test_sigterm_to_a_sweep_ends_with_the_summary_listing_jobs_not_run(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep_process(tmp_path, *LONG, "seed=0,1,2", f"hydra.sweep.dir={sweep}")
    _wait_for(lambda: any(sweep.glob("*/metrics.jsonl")))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert summary_line(0, 3, sweep, "1 stopped, 2 not run") in out
    assert "nodex: job 0 stopped: the sweep was stopped by SIGTERM" in out
    assert "nodex: job 2 not run: the sweep was stopped by SIGTERM" in out


@pytest.mark.slow
def test_a_killed_joblib_worker_fails_its_own_job_only(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep_process(tmp_path, *LONG, "trainer.max_steps=60", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                          "seed=0,1,2", f"hydra.sweep.dir={sweep}")
    _wait_for(lambda: any(e["state"] == "started" and e["num"] == 0 for e in read_entries(sweep).values())
              and any(sweep.glob("0-*/metrics.jsonl")))
    entries = read_entries(sweep)
    os.kill(entries[0]["pid"], signal.SIGKILL)
    job1_was_running = entries.get(1, {}).get("state") == "started"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    entries = read_entries(sweep)
    assert sorted(entries) == [0, 1, 2] and entries[0]["state"] == "lost", entries
    assert entries[1]["restarts"] == (1 if job1_was_running else 0), entries  # killed with the pool: run again
    assert "its joblib worker died" in entries[0]["reason"]
    # loky killed the other worker with the broken pool, or job 1 had finished: either way 1 and 2 complete
    assert entries[1]["state"] == entries[2]["state"] == "completed", entries
    assert summary_line(2, 3, sweep, "1 lost") in out, out
    for num in (1, 2):
        record = json.loads(next(sweep.glob(f"{num}-*/result.json")).read_text())
        assert record["status"] == "completed" and record["steps"] == 60, record


@pytest.mark.slow
def test_a_job_loky_killed_with_the_pool_continues_from_its_checkpoint(tmp_path):
    """Job 1, killed by loky with the pool when job 0's worker died, had saved last.pt: its run again resumes it
    (it was refused by its own dir, recorded 'failed: it wrote no result.json', and never finished)."""
    sweep = tmp_path / "sweep"
    proc = _sweep_process(tmp_path, *LONG, "trainer.max_steps=300", "trainer.checkpoint_every=10",
                          "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", f"hydra.sweep.dir={sweep}")
    _wait_for(lambda: len(list(sweep.glob("[01]-*/checkpoints/last.pt"))) == 2)
    entries = read_entries(sweep)
    os.kill(entries[0]["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    entries = read_entries(sweep)
    assert proc.returncode == 1 and entries[0]["state"] == "lost" and entries[1]["state"] == "completed", (entries, err)
    assert entries[1]["restarts"] == 1  # 300 steps: it was still running when the pool broke
    job1 = next(sweep.glob("1-*"))
    record = json.loads((job1 / "result.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 300
    assert "resumed from" in (job1 / "train.log").read_text()
    assert summary_line(1, 2, sweep, "1 lost") in out


@pytest.mark.slow
def _loky_workers() -> set[str]:
    """The pids of the loky worker processes on this machine."""
    return set(subprocess.run(["pgrep", "-f", "popen_loky"], capture_output=True, text=True).stdout.split())


def test_sigterm_to_a_joblib_sweep_stops_its_jobs_with_the_summary(tmp_path):
    sweep = tmp_path / "sweep"
    others = _loky_workers()  # e.g. an in-process joblib sweep's idle pool from an earlier test: not this sweep's
    proc = _sweep_process(tmp_path, *LONG, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2",
                          f"hydra.sweep.dir={sweep}")
    _wait_for(lambda: len(list(sweep.glob("[01]-*/metrics.jsonl"))) == 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err
    assert summary_line(0, 3, sweep, "2 stopped, 1 not run") in out, out
    assert "nodex: job 2 not run: the sweep was stopped by SIGTERM" in out
    for num in (0, 1):  # each running job got the signal, saved itself and says so
        run = next(sweep.glob(f"{num}-*"))
        stopped = json.loads((run / "result.json").read_text())
        assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"], stopped
        assert (run / "checkpoints" / "last.pt").is_file()
    _wait_for(lambda: not _loky_workers() - others, 30)  # none of the sweep's workers left


def test_a_stopped_sweep_rerun_with_resume_auto_finds_the_same_job_dirs():
    # the rerun that continues a stopped sweep adds trainer.resume=auto: it must not rename the job dirs
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nodex.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        hydra = compose(config_name="train", overrides=["seed=0"], return_hydra_config=True).hydra
    GlobalHydra.instance().clear()
    assert "trainer.resume" in hydra.job.config.override_dirname.exclude_keys


def test_a_job_stopped_by_a_signal_is_named_by_the_signal():
    from nodex.launchers import _exit_name

    assert (_exit_name(130), _exit_name(143), _exit_name(1), _exit_name(None)) == ("SIGINT", "SIGTERM", "exit 1", "exit None")


def test_a_signalled_job_counts_as_saved_once_its_record_has_ended_or_its_process_is_gone(tmp_path, live_pid):
    from nodex.launchers import _job_saved

    (tmp_path / "result.json").write_text(json.dumps({"status": "failed", "wall_time_s": None}))  # still running
    running = {"dir": str(tmp_path), "pid": live_pid}
    assert not _job_saved(running)
    (tmp_path / "result.json").write_text(json.dumps({"status": "interrupted", "wall_time_s": 3.2}))
    assert _job_saved(running)
    assert _job_saved({"dir": str(tmp_path / "none"), "pid": 2 ** 22 + 17})  # no record, no such process
