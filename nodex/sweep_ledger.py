"""A sweep's own account of its jobs: what it planned, what each job did, and one summary from that.

The sweep dir is claimed atomically at the start of a multirun (:func:`claim_sweep_dir`): a default, time-named dir
that exists already gets a ``-1``, ``-2``... suffix (``os.mkdir`` decides), and an explicit ``hydra.sweep.dir`` held
by a live sweep is refused. Everything the sweep records lives in ``SWEEP_DIR/.nodex/``:

- ``sweep.lock``: the live sweep that owns the dir (pid, host), released at its end;
- ``plan.json``: how many jobs the sweeper will launch (the basic sweeper's product of values; other sweepers:
  unknown, the ledger then counts the jobs that started);
- ``jobs/NUM.json``: one small ledger file per job number, ``{"num", "state", "dir", "reason"}``, written by the
  job's own process when it starts and ends (a Hydra callback) and by the launcher for a job that never ran, died
  or vanished. An older sweep's ledger in a reused dir is moved aside, so a sweep counts only its own jobs;
- ``stop.json``: the sweep was signalled (launchers whose jobs run in other processes): a job a worker takes up
  afterwards does not run.

A job's state is one of :data:`STATES`; the sweep exits non-zero unless every planned job is ``completed``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nodex.runs import mkdir_with_suffix, read_json, record_path
from nodex.sweeps import RunRefused, SweepOutcome, SweepSummary, _current

LEDGER_DIR = ".nodex"
STATES = ("completed", "failed", "refused", "stopped", "lost", "not run")
ENDED = set(STATES)  # "started" (and "planned") are the only states a job may still leave


class SweepRefused(RunRefused):
    """The sweep must not start (dir in use, subdir escaping it, dir not writable): one line in ``message``, which
    the CLI prints as it does for a refused run (exit 1)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` into ``path`` through a temporary file and ``os.replace`` (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, sort_keys=True))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- claiming the dir


def check_subdir(subdir: str) -> None:
    """Refuse a ``hydra.sweep.subdir`` (unresolved text) that is absolute or climbs out with ``..``.

    Raises:
        SweepRefused: naming the setting to change.
    """
    parts = subdir.replace("\\", "/").split("/")
    if os.path.isabs(subdir) or ".." in parts:
        raise SweepRefused(
            f"hydra.sweep.subdir={subdir} leaves the sweep dir; give a relative name without '..' "
            "(the default is ${hydra.job.num}-${nodex_dirname:${hydra.job.override_dirname}})"
        )


_sweep_locks: dict[Path, Any] = {}  # the sweep dirs this process holds: their RunLock on .nodex/sweep.lock


def _take_sweep_lock(sweep_dir: Path) -> None:
    """Hold ``SWEEP_DIR/.nodex/sweep.lock`` with ``flock`` for the sweep's lifetime (as a run holds its dir:
    :class:`nodex.train.lock.RunLock`): one atomic call, freed by the kernel when the sweep dies in any way, so two
    sweeps never both claim a dir and a dead sweep's lock needs no takeover.

    Raises:
        SweepRefused: a live sweep holds it (naming its pid and host).
        OSError: the dir cannot be written.
    """
    from nodex.train.lock import RunLock, RunLockedError

    lock = RunLock(sweep_dir / LEDGER_DIR, name="sweep.lock")
    try:
        lock.acquire()
    except RunLockedError:
        holder = read_json(lock.path)
        if holder is None and not os.access(lock.path.parent, os.W_OK):
            raise PermissionError(13, "Permission denied") from None
        holder = holder or {}
        raise SweepRefused(
            f"{sweep_dir} is in use by a live sweep (pid {holder.get('pid')} on {holder.get('host')}): wait for it "
            "to end or choose another hydra.sweep.dir"
        ) from None
    _sweep_locks[Path(sweep_dir)] = lock


def release_sweep_lock(sweep_dir: Path) -> None:
    """Let go of the sweep dir's lock if this process holds it (removing the file)."""
    lock = _sweep_locks.pop(Path(sweep_dir), None)
    if lock is not None:
        lock.release()


def release_sweep_locks() -> None:
    """Every sweep lock this process holds (a sweep that stopped before its end, e.g. a sweeper's error)."""
    for sweep_dir in list(_sweep_locks):
        release_sweep_lock(sweep_dir)


def claim_sweep_dir(sweep_dir: str, explicit: bool) -> Path:
    """Claim the sweep dir for this process and return it.

    ``explicit`` (``hydra.sweep.dir`` was given): the dir may exist (a rerun into an old sweep dir) unless a live
    sweep holds it. Otherwise (the default, named by the second) the first of ``DIR``, ``DIR-1``, ``DIR-2``... that
    ``os.mkdir`` creates: two sweeps started in the same second never share one.

    Raises:
        SweepRefused: the dir is held by a live sweep, or cannot be created (naming ``hydra.sweep.dir``).
    """
    path = Path(sweep_dir)
    try:
        if explicit:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path = mkdir_with_suffix(path)
        _take_sweep_lock(path)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SweepRefused(
            f"cannot create the sweep dir {path} ({reason}): run from a writable directory or set "
            "hydra.sweep.dir=A/WRITABLE/DIR"
        ) from None
    _set_aside_old_ledger(path)
    return path


def _set_aside_old_ledger(sweep_dir: Path) -> None:
    """An earlier sweep's ledger in this dir moves to ``.nodex/old-TIME/`` (kept, never counted again)."""
    base = sweep_dir / LEDGER_DIR
    found = [name for name in ("jobs", "plan.json", "stop.json") if (base / name).exists()]
    if found:
        old = base / f"old-{time.time_ns()}"
        old.mkdir(parents=True, exist_ok=True)
        for name in found:
            shutil.move(str(base / name), str(old / name))


# ---------------------------------------------------------------------------------------------- the ledger


def ledger_path(sweep_dir: str | Path, num: int) -> Path:
    return Path(sweep_dir) / LEDGER_DIR / "jobs" / f"{int(num)}.json"


def record(sweep_dir: str | Path, num: int, state: str, job_dir: str = "", reason: str = "", **extra: Any) -> None:
    """Write job ``num``'s ledger entry (``state``: ``started`` or one of :data:`STATES`)."""
    entry = {"num": int(num), "state": state, "dir": str(job_dir), "reason": reason, "pid": os.getpid(),
             "time": time.time(), **extra}
    write_json_atomic(ledger_path(sweep_dir, num), entry)


def read_entries(sweep_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Every job's ledger entry of the sweep that owns ``sweep_dir``, by job number."""
    out = {}
    for path in (Path(sweep_dir) / LEDGER_DIR / "jobs").glob("*.json"):
        entry = read_json(path)
        if entry is not None and "num" in entry:
            out[int(entry["num"])] = entry
    return out


def write_plan(sweep_dir: str | Path, jobs: Optional[int], command: str = "train") -> None:
    """The sweep's plan: how many jobs (``None``: the sweeper decides as it goes) of which command."""
    plan = {"jobs": jobs} if command == "train" else {"jobs": jobs, "command": command}
    write_json_atomic(Path(sweep_dir) / LEDGER_DIR / "plan.json", plan)


def _table_hint(sweep_dir: Path) -> str:
    """Where the summary line points for the jobs' numbers: ``nodex report`` reads train runs; an eval sweep's
    numbers are its jobs' ``eval.json``, a plot sweep's output its figures."""
    command = (read_json(Path(sweep_dir) / LEDGER_DIR / "plan.json") or {}).get("command", "train")
    if command == "eval":
        return f"metrics: {sweep_dir}/*/eval.json"
    if command == "plot":
        return "figures: the folders printed above"
    return f"table: nodex report {sweep_dir}"


def planned_jobs(sweep_dir: str | Path) -> Optional[int]:
    plan = read_json(Path(sweep_dir) / LEDGER_DIR / "plan.json") or {}
    return plan.get("jobs")


class SweepStopped(Exception):
    """A job of a sweep that a signal stopped, started by a worker afterwards: it does not run."""


def mark_stopping(sweep_dir: str | Path, signal_name: str) -> None:
    """The sweep in ``sweep_dir`` was signalled: jobs that start from now on do not run (see ``on_job_start``)."""
    write_json_atomic(Path(sweep_dir) / LEDGER_DIR / "stop.json", {"signal": signal_name, "time": time.time()})


def mark_unfinished(sweep_dir: str | Path, nums: list[int], started_as: str, reason: str) -> None:
    """Jobs ``nums`` that did not end: one that started becomes ``started_as`` (``lost``, ``stopped``), one that
    never started ``not run``; ``reason`` says why."""
    entries = read_entries(sweep_dir)
    for num in nums:
        entry = entries.get(num)
        if entry is None:
            record(sweep_dir, num, "not run", reason=reason)
        elif entry.get("state") not in ENDED:
            record(sweep_dir, num, started_as, entry.get("dir", ""), reason, restarts=entry.get("restarts", 0))


@dataclass
class LedgerOutcome(SweepOutcome):
    """:class:`SweepOutcome` from the ledger: ``jobs`` is the number planned (or started), ``failed`` every job that
    did not complete with ``(its dir or the sweep dir, "STATE: reason")``, ``states`` the count of each state."""

    states: dict[str, int] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    @classmethod
    def from_ledger(cls, sweep_dir: Path, default_state: str = "lost") -> "LedgerOutcome":
        """The outcome of the sweep in ``sweep_dir``; a job that started and never ended counts as
        ``default_state`` and a planned job without an entry as ``not run``."""
        entries = read_entries(sweep_dir)
        planned = planned_jobs(sweep_dir)
        nums = sorted(set(range(planned)) | set(entries)) if planned is not None else sorted(entries)
        states: dict[str, int] = {}
        failed, lines = [], []
        for num in nums:
            entry = entries.get(num) or {"state": "not run", "reason": "the sweep ended before it started"}
            state = entry["state"] if entry["state"] in ENDED else default_state
            if state == default_state and entry["state"] not in ENDED:
                entry = {**entry, "reason": entry.get("reason") or "it started and never recorded its end"}
            states[state] = states.get(state, 0) + 1
            if state != "completed":
                where = Path(entry["dir"]) if entry.get("dir") else Path(sweep_dir)
                failed.append((where, f"{state}: {entry.get('reason') or 'see result.json'}"))
                lines.append(f"nodex: job {num} {state}: {entry.get('reason') or 'see its result.json'}"
                             + (f" ({entry['dir']})" if entry.get("dir") else ""))
        return cls(Path(sweep_dir), len(nums), failed, states, lines)

    def counts(self) -> dict[str, int]:
        return {state: self.states[state] for state in STATES[1:] if self.states.get(state)}

    def failed_dirs(self) -> list[str]:
        return [str(d) for d, why in self.failed if why.startswith("failed:") and (d / "result.json").is_file()]

    def line(self) -> str:
        done = self.states.get("completed", 0)
        others = ", ".join(f"{self.states[s]} {s}" for s in STATES[1:] if self.states.get(s))
        return (f"nodex: sweep finished: {done}/{self.jobs} jobs completed in {self.sweep_dir} "
                f"({_table_hint(self.sweep_dir)})" + (f"; not completed: {others}" if others else ""))

    def report(self) -> None:
        """Print the summary line, then one line per job that did not complete."""
        print(self.line(), flush=True)
        for text in self.lines:
            print(text, flush=True)


# ---------------------------------------------------------------------------------------------- the Hydra callback


def planned_by_basic_sweeper(hydra_cfg: Any) -> Optional[int]:
    """How many jobs the basic sweeper launches for this multirun (the product of the swept values, over the task
    overrides and ``hydra.sweeper.params``); ``None`` for another sweeper (Optuna decides as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.errors import HydraException
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    sweeper = hydra_cfg.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False))
    parser = OverridesParser.create(config_loader=_config_loader())  # glob(...) over a group lists its options
    try:
        batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    except HydraException:  # the sweeper itself will say what is wrong with the overrides
        return None
    return sum(len(batch) for batch in batches)


def _config_loader() -> Any:
    """The config loader of the running Hydra app (``None`` outside one)."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    return hydra.config_loader() if hydra.is_initialized() else None


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_outcome: list[tuple[str, str]] = []  # what this process's job said of itself (job_outcome), read at its end


def job_outcome(state: str, reason: str) -> None:
    """The running job's own account (``"refused"``: its dir's run did not fit; ``"completed"``: nothing was left
    to do), which its ``result.json`` cannot give: the one there is the earlier run's. Same process as the job."""
    _outcome[:] = [(state, reason)]


def _job_state(config: Any, job_return: Any) -> tuple[str, str]:
    """``(state, reason)`` of a job that ran its task: from the exception that escaped it, else from its fresh
    ``result.json``, else from the run lock that refused it."""
    from hydra.core.utils import JobStatus

    if job_return is not None and job_return.status == JobStatus.FAILED:
        exc = job_return._return_value
        return "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    if _outcome:
        return _outcome.pop()
    if str(config.hydra.job.name) != "train":
        return "completed", ""
    job_dir = Path(str(config.hydra.runtime.output_dir))
    entry = read_json(ledger_path(config.hydra.sweep.dir, config.hydra.job.num)) or {}
    started = float(entry.get("time", 0.0))
    record = record_path(job_dir)
    result = read_json(record) if record is not None else None
    if result is not None and record.stat().st_mtime >= started - 1.0:
        status = str(result.get("status"))
        return ("completed", "") if status == "completed" else ("failed", str(result.get("error") or status))
    holder = read_json(job_dir / ".nodex.lock") or {}
    if holder and int(holder.get("pid", -1)) != os.getpid() and _alive(int(holder.get("pid", -1))):
        return "refused", f"its dir is in use by pid {holder.get('pid')} on {holder.get('host')} (run lock)"
    return "failed", f"it wrote no result.json (see {job_dir / 'train.log'})"


def _in_sweep(config: Any) -> bool:
    return str(config.hydra.get("mode")) == "RunMode.MULTIRUN"


def _resolved_subdir(config: Any) -> Optional[str]:
    """``hydra.sweep.subdir`` resolved as a first job would resolve it (job number 0); ``None`` when it cannot be
    resolved before the jobs exist."""
    import copy

    from omegaconf import OmegaConf, open_dict

    probe = copy.deepcopy(config)
    try:
        with open_dict(probe.hydra.job):
            probe.hydra.job.num = 0
            probe.hydra.job.override_dirname = probe.hydra.job.get("override_dirname") or "job"
        return str(OmegaConf.select(probe, "hydra.sweep.subdir"))
    except Exception:  # a resolver that needs the job itself: the text check above is what can be done
        return None


class SweepLedger(SweepSummary):
    """Hydra callback (``configs/common/hydra.yaml``, in place of :class:`~nodex.sweeps.SweepSummary`): claims the
    sweep dir, records the plan and each job's start and end in the ledger, and at the end prints the summary from
    the ledger (every planned job with its state) and leaves it for the CLI's exit code."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import open_dict

        hydra = config.hydra
        check_subdir(str(hydra.sweep._get_node("subdir")._value()))
        resolved = _resolved_subdir(config)
        if resolved is not None:  # an interpolation (${oc.env:X}, ${hydra.runtime.cwd}/...) may lead out too
            check_subdir(resolved)
        explicit = any(str(o).lstrip("+~").split("=")[0] == "hydra.sweep.dir" for o in hydra.overrides.hydra)
        path = claim_sweep_dir(str(hydra.sweep.dir), explicit)
        if not explicit:  # the jobs compose their config again from these overrides: they must see the claimed dir
            with open_dict(hydra):
                hydra.sweep.dir = str(path)
                hydra.overrides.hydra.append(f"hydra.sweep.dir={_quoted(str(path))}")
        write_plan(path, planned_by_basic_sweeper(hydra), str(hydra.job.name))
        super().on_multirun_start(config, **kwargs)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if not _in_sweep(config):
            return
        sweep_dir, num = config.hydra.sweep.dir, int(config.hydra.job.num)
        stop = read_json(Path(sweep_dir) / LEDGER_DIR / "stop.json")
        if stop is not None:  # a worker took the job after the sweep was signalled: it does not run
            from nodex.runs import drop_snapshot

            drop_snapshot(Path(str(config.hydra.runtime.output_dir)))
            raise SweepStopped(f"the sweep was stopped by {stop.get('signal')}")
        earlier = read_json(ledger_path(sweep_dir, num)) or {}
        restarts = int(earlier.get("restarts", -1)) + 1 if earlier.get("state") == "started" else 0
        record(sweep_dir, num, "started", str(config.hydra.runtime.output_dir), restarts=restarts)

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        if not _in_sweep(config):
            return
        state, reason = _job_state(config, job_return)
        sweep_dir, num = config.hydra.sweep.dir, int(config.hydra.job.num)
        restarts = (read_json(ledger_path(sweep_dir, num)) or {}).get("restarts", 0)
        record(sweep_dir, num, state, str(config.hydra.runtime.output_dir), reason, restarts=restarts)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        outcome = finish(sweep_dir)
        if _current:
            _current[-1].outcome = outcome


def finish(sweep_dir: Path, default_state: str = "lost") -> LedgerOutcome:
    """End of the sweep in ``sweep_dir``: its outcome from the ledger, printed, and the dir's lock released."""
    outcome = LedgerOutcome.from_ledger(sweep_dir, default_state)
    outcome.report()
    release_sweep_lock(sweep_dir)
    return outcome
