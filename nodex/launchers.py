"""nodex's Hydra launchers: Hydra's own (basic, joblib, submitit) with bounded waits and an honest ledger.

Selected by ``_target_`` in ``configs/hydra/launcher/*.yaml``; each keeps its plugin's keys and behaviour and adds:

- :class:`BasicLauncher`: a SIGTERM to the sweep stops it after the running job saved itself; the summary then lists
  that job as ``stopped`` and the rest as ``not run``, and the sweep exits 143.
- :class:`JoblibLauncher`: a worker that dies (``kill -9``, the OOM killer) fails its own job as ``lost``; the jobs
  loky killed with the broken pool and those not started yet run in a fresh pool, and the summary lists every job.
  A SIGTERM (or SIGINT) to the sweep goes on to the running jobs (each saves itself), no further job starts, and the
  summary lists them as ``stopped`` and ``not run`` (exit 143 or 130), as on the basic launcher.
- :class:`SlurmLauncher`: waits on its jobs with a bounded poll of ``squeue`` instead of submitit's ``sacct`` watcher
  (which waits forever where accounting is off): a job that left the queue (cancelled, failed at launch, lost by the
  scheduler) without a result pickle within ``lost_after_s`` ends as a ``lost`` job with one line.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher as HydraBasicLauncher
from hydra.core.utils import JobReturn, JobStatus

from nodex.sweep_ledger import finish, mark_stopping, mark_unfinished, read_entries, record
from nodex.train.preemption import catchable

log = logging.getLogger("nodex")


def placeholder_return(overrides: Sequence[str]) -> JobReturn:
    """What a launcher hands the sweeper for a job whose state the ledger holds (lost, not run): a return the basic
    sweeper accepts, so that the sweep goes on and ends with its summary."""
    return JobReturn(overrides=list(overrides), _return_value=None, status=JobStatus.COMPLETED)


class _SweepSignals:
    """``with _SweepSignals() as sig:`` records a SIGTERM to the sweep in ``sig.signum`` (main thread only); a job's
    own handler (nodex's StopRequest) chains to this one, so the sweep learns of the signal either way.
    ``signals``: the ones to catch; ``on_signal(signum)``: called at the first."""

    def __init__(self, on_signal: Optional[Callable[[int], None]] = None,
                 signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._on_signal = on_signal
        self._signals = signals

    def _record(self, signum: int, frame: Any) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if first and self._on_signal is not None:
            self._on_signal(signum)

    def __enter__(self) -> "_SweepSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in catchable(self._signals)}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _hydra_basic_launch(launcher: Any, job_overrides: Sequence[Sequence[str]], first: int) -> Sequence[JobReturn]:
    """Hydra's own basic ``launch``, looked up when called: Hydra's plugin scan executes its module again, so the class
    bound at import may no longer be the one in the module."""
    from hydra._internal.core_plugins import basic_launcher

    return basic_launcher.BasicLauncher.launch(launcher, job_overrides, first)


class BasicLauncher(HydraBasicLauncher):
    """Hydra's basic launcher (jobs one after the other in this process), stopped cleanly by SIGTERM."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        runs: list[JobReturn] = []
        exit_code: Optional[int] = None
        with _SweepSignals() as sig:
            for i, overrides in enumerate(job_overrides):
                if sig.signum is not None:
                    break
                try:
                    runs.extend(_hydra_basic_launch(self, [overrides], initial_job_idx + i))
                except SystemExit as exc:  # a job stopped by a signal saved itself and exits
                    exit_code = exc.code if isinstance(exc.code, int) else 1
                    break
        if sig.signum is None and exit_code is None:
            return runs
        nums = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        if sig.signum:
            _end_stopped_sweep(sweep_dir, nums, signal.Signals(sig.signum).name, 128 + sig.signum)
        _end_stopped_sweep(sweep_dir, nums, _exit_name(exit_code), exit_code)


def _exit_name(code: Optional[int]) -> str:
    """What stopped a job that exited with ``code``: the signal of ``128 + N`` (``SIGINT``: Ctrl-C), else the code."""
    try:
        return signal.Signals(int(code or 0) - 128).name if int(code or 0) > 128 else f"exit {code}"
    except ValueError:
        return f"exit {code}"


def _plugin_base(module: str, name: str) -> type:
    """A launcher plugin's class to extend, or Hydra's basic launcher when its extra is not installed
    (:func:`nodex.sweeps.missing_plugin` says so before any use)."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return HydraBasicLauncher


_JoblibBase = _plugin_base("hydra_plugins.hydra_joblib_launcher.joblib_launcher", "JoblibLauncher")


@contextmanager
def _collateral_kills() -> Iterator[set[int]]:
    """``with _collateral_kills() as killed:`` collects the pids of the joblib workers that loky kills *alive* when
    its pool breaks (it kills every worker with SIGKILL once one has died); the worker that died first is already
    dead then and is not in the set. Outside joblib's loky (or another layout of it) the set stays empty."""
    killed: set[int] = set()
    try:
        from joblib.externals.loky import process_executor
    except ImportError:
        yield killed
        return
    original = getattr(process_executor, "kill_process_tree", None)
    if original is None:
        yield killed
        return

    def kill_process_tree(process: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(process, "exitcode", 0) is None:  # still running: killed for the pool, not dead on its own
            killed.add(int(process.pid))
        return original(process, *args, **kwargs)

    process_executor.kill_process_tree = kill_process_tree
    try:
        yield killed
    finally:
        process_executor.kill_process_tree = original


def stop_running_jobs(sweep_dir: Path, nums: Sequence[int], signum: int, wait_s: float = 60.0) -> None:
    """A stop signal reached a sweep whose jobs run in other processes: no job starts from now on (the ledger's stop
    mark), the signal goes on to every running job's process (each saves its checkpoint and ``result.json``, as when
    signalled itself), and this waits — at most ``wait_s`` — until they have, so that nothing is cut mid-save."""
    mark_stopping(sweep_dir, signal.Signals(signum).name)
    running = {num: e for num, e in read_entries(sweep_dir).items() if num in nums and e.get("state") == "started"}
    for entry in running.values():
        try:
            os.kill(int(entry["pid"]), signum)
        except (OSError, KeyError, ValueError):
            pass
    deadline = time.monotonic() + wait_s
    while running and time.monotonic() < deadline:
        running = {num: e for num, e in running.items() if not _job_saved(e)}
        time.sleep(0.1)


def _job_saved(entry: dict) -> bool:
    """The job of a ledger ``entry`` is no longer running: its record says it ended (a finished record has its wall
    time; one written while the run goes on has none), or its process is gone."""
    from nodex.runs import run_record

    if entry.get("dir") and run_record(Path(entry["dir"])).get("wall_time_s") is not None:
        return True
    try:
        os.kill(int(entry["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return True
    return False


def _shut_down_idle_workers() -> None:
    """End loky's worker pool once a stopped sweep's jobs have saved themselves: joblib starts a fresh pool after an
    aborted call, whose idle workers would outlive the sweep by loky's idle timeout (minutes)."""
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:
        return
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def _end_stopped_sweep(sweep_dir: Path, nums: Sequence[int], cause: str, code: Optional[int]) -> NoReturn:
    """The summary of a sweep that ``cause`` stopped (``SIGTERM``; running jobs ``stopped``, the rest ``not run``),
    then exit ``code`` (128 + N for a signal N)."""
    mark_unfinished(sweep_dir, list(nums), "stopped", f"the sweep was stopped by {cause}")
    finish(sweep_dir, default_state="stopped")
    raise SystemExit(code)


class JoblibLauncher(_JoblibBase):  # type: ignore[misc, valid-type]
    """hydra-joblib-launcher's launcher; a dead worker fails its own job, not the sweep."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Run the jobs in joblib's pool. A worker that dies (``kill -9``, the OOM killer) breaks the pool: its job is
        recorded ``lost``; the jobs loky killed with the pool and those not started yet run again in a fresh pool
        (a killed job resumes from its ``last.pt``, ``trainer.resume=auto``)."""
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        nums = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        stop = _SweepSignals(lambda signum: stop_running_jobs(sweep_dir, nums, signum), (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
        with stop as sig:
            with _collateral_kills() as collateral:
                try:
                    returns = super().launch(job_overrides, initial_job_idx)
                    reason = ""
                except TerminatedWorkerError as exc:
                    reason = f"its joblib worker died ({str(exc).strip().splitlines()[0][:160]})"
                except BaseException:  # a job stopped by the signal: it saved itself, its worker passed on its exit
                    if sig.signum is None:
                        raise
        if sig.signum is not None:
            _shut_down_idle_workers()
            _end_stopped_sweep(sweep_dir, nums, signal.Signals(sig.signum).name, 128 + sig.signum)
        if not reason:
            return returns
        entries = read_entries(sweep_dir)
        rerun = []
        for num, overrides in zip(nums, job_overrides):
            entry = entries.get(num)
            if entry is None or (entry.get("state") == "started" and entry.get("pid") in collateral):
                rerun.append((num, overrides))
            elif entry.get("state") == "started":  # in the worker that died (or no way to tell it from one)
                record(sweep_dir, num, "lost", entry.get("dir", ""), reason, restarts=entry.get("restarts", 0))
        returns = {num: placeholder_return(o) for num, o in zip(nums, job_overrides)}
        for num, overrides in rerun:
            log.info("nodex: job %d runs again in a fresh joblib pool (the pool broke: %s)", num, reason)
            returns.update(self._launch_again(sweep_dir, num, _continuing(overrides)))
        return [returns[num] for num in nums]

    def _launch_again(self, sweep_dir: Path, num: int, overrides: Sequence[str]) -> dict[int, JobReturn]:
        """Job ``num`` alone in a fresh pool; a worker dying again loses it."""
        from joblib.externals.loky.process_executor import TerminatedWorkerError

        try:
            return {num: super().launch([overrides], num)[0]}
        except TerminatedWorkerError as again:
            entry = read_entries(sweep_dir).get(num, {})
            record(sweep_dir, num, "lost", entry.get("dir", ""),
                   f"its joblib worker died ({str(again).splitlines()[0][:160]})", restarts=entry.get("restarts", 0))
            return {}


def _continuing(overrides: Sequence[str]) -> list[str]:
    """A killed job's overrides for its run again: ``trainer.resume=auto`` (unless set), so it continues from the
    ``last.pt`` it saved instead of being refused by its own dir; the key is left out of job dir names, so the job
    keeps its dir."""
    if any(str(o).split("=", 1)[0].lstrip("+~") == "trainer.resume" for o in overrides):
        return list(overrides)
    return [*overrides, "trainer.resume=auto"]


# ---------------------------------------------------------------------------------------------- Slurm

# squeue states of a job that is still the scheduler's business; anything else (or no line) means it left the queue
QUEUED = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
          "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "PREEMPTED", "RESV_DEL_HOLD"}
# a pending job Slurm will never start on its own
NEVER_STARTS = ("launch failed requeued held", "launch_failed_requeued_held")


def squeue_states(job_ids: list[str], timeout_s: float = 30.0) -> Optional[dict[str, tuple[str, str]]]:
    """``{job id: (state, reason)}`` for those of ``job_ids`` still in Slurm's queue (``{}``: none is); ``None``
    when squeue did not answer."""
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(job_ids)],
                              capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return {} if "Invalid job id" in proc.stderr else None
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1].upper(), parts[2])
    return out


def in_queue(state: tuple[str, str]) -> bool:
    name, reason = state
    return name in QUEUED and not (name == "PENDING" and reason.lower() in NEVER_STARTS)


def wait_for_jobs(jobs: Sequence[Any], job_overrides: Sequence[Sequence[str]], first_num: int, sweep_dir: Path,
                  lost_after_s: float, poll_s: float,
                  queue: Callable[[list[str]], Optional[dict[str, tuple[str, str]]]] = squeue_states,
                  ) -> list[JobReturn]:
    """Wait for submitit ``jobs`` (job ``first_num + i`` ran ``job_overrides[i]``), bounded: a job is done when its
    result pickle exists; a job that has been out of the queue (or unseen, squeue silent) for ``lost_after_s``
    (10 times that when squeue does not answer) with no pickle is recorded ``lost`` with one line."""
    returns: dict[int, JobReturn] = {}
    missing_since: dict[int, float] = {}
    while len(returns) < len(jobs):
        open_ids = [str(job.job_id) for i, job in enumerate(jobs) if i not in returns]
        states = queue(open_ids)
        now = time.monotonic()
        for i, job in enumerate(jobs):
            if i in returns:
                continue
            if job.paths.result_pickle.exists():
                returns[i] = _collect(job, job_overrides[i], sweep_dir, first_num + i)
                continue
            state = None if states is None else states.get(str(job.job_id), ("GONE", ""))
            if state is not None and in_queue(state):
                missing_since.pop(i, None)
                continue
            limit = lost_after_s if states is not None else 10 * lost_after_s
            if now - missing_since.setdefault(i, now) < limit:
                continue
            if state is None:
                gone = "was not seen (squeue did not answer)"
            else:
                gone = "left Slurm's queue" if state[0] == "GONE" else f"is {state[0]} ({state[1]}) in Slurm's queue"
            reason = f"Slurm job {job.job_id} {gone} and wrote no result within {limit:g} s"
            _record_lost(sweep_dir, first_num + i, reason)
            returns[i] = placeholder_return(job_overrides[i])
        if len(returns) < len(jobs):
            time.sleep(poll_s)
    return [returns[i] for i in range(len(jobs))]


def _record_lost(sweep_dir: Path, num: int, reason: str) -> None:
    entry = read_entries(sweep_dir).get(num) or {}
    record(sweep_dir, num, "lost", entry.get("dir", ""), reason, restarts=entry.get("restarts", 0))


def _collect(job: Any, overrides: Sequence[str], sweep_dir: Path, num: int) -> JobReturn:
    try:
        return job.results()[0]
    except Exception as exc:  # the job's process failed outside the task (submitit's own error)
        _record_lost(sweep_dir, num, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
        return placeholder_return(overrides)


_SlurmBase = _plugin_base("hydra_plugins.hydra_submitit_launcher.submitit_launcher", "SlurmLauncher")


class SlurmLauncher(_SlurmBase):  # type: ignore[misc, valid-type]
    """hydra-submitit-launcher's Slurm launcher, waiting on its jobs with :func:`wait_for_jobs`.

    ``lost_after_s``: how long a job may be out of the queue without a result before it counts as lost;
    ``poll_s``: seconds between two looks at squeue and the result pickles."""

    def __init__(self, lost_after_s: float = 60.0, poll_s: float = 2.0, **params: Any) -> None:
        super().__init__(**params)
        self.lost_after_s, self.poll_s = float(lost_after_s), float(poll_s)

    def _executor(self) -> Any:
        """The submitit executor with this launcher's parameters (as the plugin's ``launch`` builds it)."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        init_keys = {"submitit_folder", "max_num_timeout"}
        init_params = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init_params[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in self.params.items() if k not in init_keys})
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import os

        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides

        assert self.config is not None
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {sweep_dir}")
        params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*params))
        return wait_for_jobs(jobs, job_overrides, initial_job_idx, sweep_dir, self.lost_after_s, self.poll_s)
