"""Preemption and the run lock as units: a stop signal is recorded (never acted on mid-step) and forwarded to the
handler installed before; one live writer per run directory, a dead owner's lock taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nodex.train.lock import LOCK_NAME, RunLock, RunLockedError
from nodex.train.preemption import Preempted, StopRequest, raise_if_requested


def test_sigterm_is_recorded_and_the_step_boundary_saves_then_stops():
    saved = []
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        raise_if_requested(stop, 3, lambda: saved.append(3))  # nothing yet
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop.signal == signal.SIGTERM and saved == []  # recorded, not acted on
        with pytest.raises(Preempted) as info:
            raise_if_requested(stop, 4, lambda: saved.append(4))
    assert saved == [4] and info.value.step == 4 and info.value.exit_code == 143
    assert "stopped by SIGTERM at step 4" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def test_ctrl_c_stops_at_once_while_abortable_and_waits_for_the_boundary_otherwise():
    before = signal.getsignal(signal.SIGINT)
    saved = []
    with StopRequest() as stop:
        with pytest.raises(KeyboardInterrupt):  # drawing a batch, computing gradients: nothing to lose
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        stop.abortable = False  # the update is being applied
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.interrupted and stop.signal is None and stop.received == []  # recorded, never forwarded
        with pytest.raises(KeyboardInterrupt):
            raise_if_requested(stop, 5, lambda: saved.append(5))
    assert saved == []  # the loop saves on its way out of a KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) == before


def test_the_previous_handler_gets_the_signal_forwarded():
    calls = []
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.01)
            assert calls == []  # submitit's requeue waits for the step boundary
            stop.forward()
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is not stop._record  # ours is gone again
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_sigterm_then_sigusr2_both_reach_their_previous_handlers_in_order():
    """A preemption under submitit brings SIGTERM (submitit only logs it) and then SIGUSR2 (submitit requeues):
    the second signal must not be lost because the first one already stopped the run."""
    calls = []
    old_term = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append("term"))
    old_usr2 = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append("usr2"))
    try:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            assert stop.signal == signal.SIGTERM and stop.received == [signal.SIGTERM, signal.SIGUSR2]
            stop.forward()
        assert calls == ["term", "usr2"]
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGUSR2, old_usr2)


def test_a_second_live_writer_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nodex.train.lock import RunLock; "
         "lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"is in use by pid {holder.pid} on .*choose another hydra.run.dir"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_owners_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / LOCK_NAME
    lock_file.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": 0}))
    with RunLock(tmp_path) as lock:
        assert json.loads(lock_file.read_text())["pid"] == os.getpid() and lock.held
    assert not lock_file.exists()
    lock_file.write_text("{half-writ")  # an owner that died while writing it
    with RunLock(tmp_path):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()


def test_a_lock_left_on_another_host_by_kill_9_is_taken_over(tmp_path):
    """Its holder is gone, so nobody holds the flock: the requeued job on a new host goes on (a live holder on
    another host is refused: tests/test_lock.py)."""
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "some-other-node", "started": 0}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_checkpoint_that_cannot_be_written_keeps_the_old_one_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import torch

    from nodex.errors import CheckpointError
    from nodex.train.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    real_save = torch.save

    def disk_full(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write .*last.pt \(\[Errno 28\] No space left on device\); free disk"
                                              r" space .*\(the previous last.pt is kept\)"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_an_ensembles_checkpoints_are_renamed_only_when_all_were_written(tmp_path, monkeypatch):
    import torch

    from nodex.errors import CheckpointError
    from nodex.train.checkpoint import load_checkpoint, save_checkpoints

    paths = [tmp_path / f"member-{k}" / "last.pt" for k in range(3)]
    save_checkpoints([({"step": 1}, p) for p in paths])
    real_save, calls = torch.save, []

    def full_on_the_third(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 3:
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_on_the_third)
    with pytest.raises(CheckpointError, match=r"could not write .*member-2/last.pt \(\[enforce fail"):
        save_checkpoints([({"step": 2}, p) for p in paths])
    monkeypatch.setattr(torch, "save", real_save)
    assert [load_checkpoint(p)["step"] for p in paths] == [1, 1, 1]  # none renamed: all still at step 1
    assert sorted(f.name for f in tmp_path.rglob("*") if f.is_file()) == ["last.pt"] * 3  # no .tmp left


@pytest.mark.slow
def test_a_sigterm_during_the_final_test_waits_for_the_record(train_run, monkeypatch):
    """The final test and figures run under the stop handler too: a SIGTERM there is recorded, the run finishes its
    test and writes its record (killed by the default handler, it left no result.json and a stale lock)."""
    from nodex.train.run import TrainRun

    real = TrainRun.test

    def test(self):
        os.kill(os.getpid(), signal.SIGTERM)
        real(self)

    monkeypatch.setattr(TrainRun, "test", test)
    run_dir, result, code, err = train_run("trainer.max_steps=10")
    assert code == 0, err
    assert result["status"] == "completed" and result["steps"] == 10 and "test/accuracy" in result["metrics"]
    with RunLock(run_dir):  # released: another run may take the dir
        pass


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_the_run_starts_is_one_line_and_recorded(cli, tmp_path, monkeypatch, signum):
    """Its dir locked, the run not yet started (its own handler not installed): SIGTERM/SIGHUP killed the process
    silently (exit 143/129, no record)."""
    from conftest import FAST

    import nodex.train.run

    real = nodex.train.run.plan_resume

    def signalled(cfg, run_dir):
        os.kill(os.getpid(), signum)
        return real(cfg, run_dir)

    monkeypatch.setattr(signal, "getsignal", lambda s, real_get=signal.getsignal: (
        signal.SIG_DFL if s in (signal.SIGTERM, signal.SIGHUP) else real_get(s)))  # as in a fresh process
    monkeypatch.setattr(nodex.train.run, "plan_resume", signalled)
    run_dir = tmp_path / "run"
    code, out, err = cli(["train", *FAST, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"])
    name = signal.Signals(signum).name
    assert code == 128 + signum
    assert err.strip().splitlines()[-1] == f"nodex: error: stopped by {name} before the run started; nothing was trained"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "interrupted" and result["error"] == f"stopped by {name} before the run started"
    assert not (run_dir / LOCK_NAME).exists()
