"""The run lock under races and requeues: exactly one holder of a stale lock among racing processes, a requeued
Slurm job takes over its own lock on any host, a live holder elsewhere is refused with one line."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from nodex.train.lock import LOCK_NAME, RunLock, RunLockedError

HOLD = ("import os, socket, sys, time; socket.gethostname = lambda: sys.argv[2]; "
        "from nodex.train.lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(60)")


def _racer(path: str, start, tried, released, outcomes, trials: int) -> None:
    for _ in range(trials):
        start.wait()
        lock = RunLock(path)
        try:
            lock.acquire()
        except RunLockedError:
            pass
        outcomes.put(lock.held)
        tried.wait()  # every racer has tried while the winner still holds it
        lock.release()
        released.wait()


def test_racing_processes_on_a_stale_lock_get_exactly_one_holder(tmp_path):
    racers, trials = 4, 200
    ctx = multiprocessing.get_context("fork")
    start, tried, released = (ctx.Barrier(racers + 1) for _ in range(3))
    outcomes = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), start, tried, released, outcomes, trials))
             for _ in range(racers)]
    for p in procs:
        p.start()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holders = []
    try:
        for _ in range(trials):
            (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                          "started": 0}))  # left by a process that is gone
            start.wait(timeout=30)
            tried.wait(timeout=30)
            holders.append(sum(outcomes.get(timeout=30) for _ in range(racers)))
            released.wait(timeout=30)
    finally:
        for p in procs:
            p.join(timeout=30)
    assert holders == [1] * trials
    assert not (tmp_path / LOCK_NAME).exists()  # the holder's release removes it


def _holder(tmp_path, host: str, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), host], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_requeued_slurm_job_takes_over_its_own_lock_from_another_host(tmp_path, monkeypatch):
    old = _holder(tmp_path, "crashed-node", {"SLURM_JOB_ID": "4242"})  # its host died; the lock is not yet freed
    try:
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        with RunLock(tmp_path) as lock:
            record = json.loads((tmp_path / LOCK_NAME).read_text())
            assert lock.held and record["pid"] == os.getpid() and record["slurm_job_id"] == "4242"
        assert not (tmp_path / LOCK_NAME).exists()
    finally:
        old.kill()
        old.wait()


@pytest.mark.parametrize("job", [None, "777"])
def test_a_live_holder_on_another_host_is_refused_with_one_line(tmp_path, monkeypatch, job):
    other = _holder(tmp_path, "some-other-node", {"SLURM_JOB_ID": "4242"})
    try:
        if job:
            monkeypatch.setenv("SLURM_JOB_ID", job)  # another job
        else:
            monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path).acquire()
        assert str(info.value) == (f"{tmp_path} is in use by pid {other.pid} on some-other-node (since "
                                   f"{str(info.value).split('(since ')[1].split(')')[0]}): wait for that run to end "
                                   "or choose another hydra.run.dir")
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == other.pid  # untouched
    finally:
        other.kill()
        other.wait()


def test_a_killed_holders_lock_is_free_at_once(tmp_path):
    old = _holder(tmp_path, os.uname().nodename, {})
    old.kill()
    old.wait()
    assert (tmp_path / LOCK_NAME).exists()  # left behind by kill -9, but nobody holds it
    with RunLock(tmp_path) as lock:
        assert lock.held


def test_a_refused_lock_leaves_a_dir_it_created_removable(tmp_path):
    lock = RunLock(tmp_path / "new" / "run").acquire()
    assert lock.created_dir and not RunLock(tmp_path).acquire().created_dir
    lock.release()
    assert list((tmp_path / "new" / "run").iterdir()) == []


def test_without_flock_the_owner_record_decides(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")  # an NFS mount with nolock

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(dead.stdout), "host": os.uname().nodename, "started": 0}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    with RunLock(tmp_path):  # a process gone from this host
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({**record, "host": "other-node", "slurm_job_id": "9"}))
    with pytest.raises(RunLockedError, match=f"in use by pid {record['pid']} on other-node"):
        RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "9")  # the same job, requeued
    with RunLock(tmp_path) as lock:
        assert lock.held
