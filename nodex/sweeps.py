"""Sweeps on Hydra's launchers and sweepers: plugin checks and the end-of-sweep summary.

- :func:`missing_plugin` turns ``hydra/launcher=ray`` (or an Optuna search) without its plugin
  installed into one line naming the extra to install, before Hydra composes anything.
- :class:`SweepSummary` is a Hydra callback (``configs/common/hydra.yaml``): at the end of a
  multirun it reads every job's ``result.json`` in the sweep dir (:func:`nodex.runs.load_run`), prints one line with the
  counts, and leaves a :class:`SweepOutcome` (read from those files) that the CLI turns into
  exit 1 with the same message whichever launcher ran the jobs (a job in a joblib/Ray/Slurm
  worker cannot report back any other way). Failed jobs never stop the sweep; their ``result.json`` says why.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback

from nodex.config import SCHEMA_MATCH_WARNING
from nodex.runs import Run, load_run

log = logging.getLogger("nodex")

# option of hydra/launcher or hydra/sweeper -> (plugin module, nodex extra)
PLUGINS = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "ray"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("hparams_search", "*"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
}

# configs/hydra/launcher/{joblib,submitit_local,ray}.yaml share their names with the plugins'
# own configs on purpose (`hydra/launcher=joblib` just works), and Hydra 1.3 then validates
# them against the plugin's schema and says so in a deprecation warning on every run.


def quiet_schema_warning() -> None:
    """Silence Hydra's warning about our launcher YAMLs matching the plugins' schemas, and
    SQLAlchemy 1.4's "not compatible with 2.0" banner (the optuna extra pins sqlalchemy<2)."""
    warnings.filterwarnings("ignore", message=SCHEMA_MATCH_WARNING)
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_plugin(groups: list[tuple[str, str]]) -> Optional[str]:
    """The one-line error for the first ``(group, option)`` override whose plugin is missing."""
    for group, option in groups:
        group = group.lstrip("+~").lstrip("/")
        entry = PLUGINS.get((group, option)) or PLUGINS.get((group, "*"))
        if entry and option not in ("null", "None") and not _installed(entry[0]):
            module, extra = entry
            return (
                f"{group}={option} needs the {extra!r} extra ({module} is not installed): pip install 'nodex[{extra}]'"
            )
    return None


def result_files(sweep_dir: Path) -> dict[Path, int]:
    """Every ``result.json`` under ``sweep_dir`` with its modification time (ns)."""
    out = {}
    for path in Path(sweep_dir).rglob("result.json"):
        try:
            out[path] = path.stat().st_mtime_ns
        except OSError:
            continue
    return out


def sweep_runs(sweep_dir: Path, before: dict[Path, int] | None = None) -> list[Run]:
    """Every job under ``sweep_dir`` whose ``result.json`` is not one of ``before`` (as :func:`result_files` saw them
    when the sweep started): a sweep rerun into an old sweep dir counts only its own jobs."""
    before = before or {}
    return [load_run(path.parent) for path, mtime in sorted(result_files(sweep_dir).items())
            if before.get(path) != mtime]


# Folder names may hold 255 bytes; the job number and '-' go in front of this part of the name.
MAX_DIRNAME_BYTES = 200


def dirname_safe(value: str) -> str:
    """An override string fit for one folder name: ``/`` (which would nest or escape the sweep dir) becomes ``%2F``;
    a name longer than :data:`MAX_DIRNAME_BYTES` (many overrides) is cut and ends in a hash of the whole string, so
    it stays unique instead of failing with "File name too long"."""
    import hashlib

    safe = str(value).replace("%", "%25").replace("/", "%2F")
    raw = safe.encode()
    if len(raw) <= MAX_DIRNAME_BYTES:
        return safe
    digest = hashlib.sha1(raw).hexdigest()[:12]
    return raw[: MAX_DIRNAME_BYTES - 14].decode(errors="ignore") + "--" + digest


def register_resolvers() -> None:
    """``${nodex_dirname:...}`` for ``hydra.sweep.subdir`` and ``${nodex_snapshot_subdir:...}`` for
    ``hydra.output_subdir`` (every process that resolves a job's config needs them)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("nodex_dirname"):
        OmegaConf.register_new_resolver("nodex_dirname", dirname_safe)
    if not OmegaConf.has_resolver("nodex_snapshot_subdir"):
        from nodex.runs import snapshot_subdir

        OmegaConf.register_new_resolver("nodex_snapshot_subdir", snapshot_subdir)


@dataclass
class SweepOutcome:
    """What one multirun left on disk: its dir, how many jobs wrote ``result.json``, and those that did not say
    ``completed`` (with the reason)."""

    sweep_dir: Path
    jobs: int
    failed: list[tuple[Path, str]]

    @classmethod
    def read(cls, sweep_dir: Path, before: dict[Path, int]) -> "SweepOutcome":
        runs = sweep_runs(sweep_dir, before)
        return cls(sweep_dir, len(runs), [(r.path, str(r.error or r.status)) for r in runs if not r.ok])

    def counts(self) -> dict[str, int]:
        """How many jobs ended in each state other than completed (here every such job failed)."""
        return {"failed": len(self.failed)} if self.failed else {}

    def failed_dirs(self) -> list[str]:
        """The dirs of the jobs that failed (their ``result.json`` says why)."""
        return [str(d) for d, _ in self.failed]

    def error_line(self) -> str:
        """The CLI's closing error: the jobs that did not complete, by state (``2 job(s) refused``), and the dirs
        whose ``result.json`` says why the failed ones failed."""
        counts = ", ".join(f"{n} job(s) {state}" for state, n in self.counts().items())
        failed = self.failed_dirs()
        return counts + ("; see result.json in: " + "; ".join(failed) if failed else "; see the lines above")

    def line(self) -> str:
        return (
            f"nodex: sweep finished: {self.jobs - len(self.failed)}/{self.jobs} jobs completed in {self.sweep_dir}"
            f" (table: nodex report {self.sweep_dir})"
        )


@dataclass
class _Sweep:
    sweep_dir: Path
    before: dict[Path, int]
    outcome: SweepOutcome | None = None


_current: list[_Sweep] = []  # the multirun of this process (the CLI runs one at a time)


def take_outcome() -> SweepOutcome | None:
    """The outcome of the multirun that ended last in this process (once), else ``None``."""
    sweep = _current.pop() if _current else None
    return sweep.outcome if sweep is not None else None


def abandon(reason: str) -> SweepOutcome | None:
    """The multirun in progress stopped in the launcher (``reason``): its outcome from the files written so far,
    with the summary line printed; ``None`` when no multirun was in progress."""
    sweep = _current.pop() if _current else None
    if sweep is None:
        return None
    outcome = SweepOutcome.read(sweep.sweep_dir, sweep.before)
    if outcome.jobs:
        print(outcome.line(), flush=True)
    outcome.failed.append((sweep.sweep_dir, reason))
    return outcome


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, read the jobs' ``result.json`` files, print one summary line and
    leave the :class:`SweepOutcome` for the CLI's exit code."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _current.clear()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _current.append(_Sweep(sweep_dir, result_files(sweep_dir)))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if not _current:
            return
        sweep = _current[-1]
        sweep.outcome = SweepOutcome.read(sweep.sweep_dir, sweep.before)
        if sweep.outcome.jobs:
            print(sweep.outcome.line(), flush=True)


def local_workers(hydra_cfg: Any) -> int:
    """How many jobs of this sweep run at once on this machine (``hydra_cfg``: the job's ``hydra`` node): a joblib
    launcher's ``n_jobs`` (``-1``: one per CPU), 1 for a plain run, the basic launcher and cluster launchers."""
    if str(hydra_cfg.get("mode")) != "RunMode.MULTIRUN":
        return 1
    launcher = hydra_cfg.get("launcher") or {}
    if str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        n_jobs = int(launcher.get("n_jobs") or 1)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return cpus if n_jobs < 0 else max(1, n_jobs)
    return 1


class RunRefused(BaseException):
    """A run that must not start (its dir is in use), raised from a Hydra callback: a ``BaseException`` because
    Hydra turns a callback's ``Exception`` into a warning and goes on. The CLI reports ``message`` as one line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


_held_locks: list[Any] = []  # the run lock a RunGuard took in this process (released however the run ends)


def release_run_locks() -> None:
    """Release the run lock of this process's single run: also after a run that ended in ``SystemExit`` (a failure,
    SIGTERM, Ctrl-C), where Hydra skips ``on_run_end``. The CLI calls it when its command ends."""
    while _held_locks:
        _held_locks.pop().release()


def _claim_default_run_dir(config: Any) -> bool:
    """A run without ``hydra.run.dir`` on its command line gets a dir of its own: the default, named by the second,
    or ``-1``, ``-2``... after it when another run took that name (two runs started in the same second: the second
    was refused by the first's lock, or its completed record). Returns whether it created the dir.

    Raises:
        RunRefused: the parent folder cannot be written (naming ``hydra.run.dir``).
    """
    from omegaconf import open_dict

    from nodex.runs import mkdir_with_suffix

    if any(str(o).lstrip("+~").split("=")[0] == "hydra.run.dir" for o in config.hydra.overrides.hydra):
        return False
    path = Path(str(config.hydra.run.dir))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        claimed = mkdir_with_suffix(path)
    except OSError as exc:
        raise RunRefused(f"cannot create the run dir {path} ({exc.strerror or type(exc).__name__}): run from a "
                         "writable directory or set hydra.run.dir=A/WRITABLE/DIR") from None
    if claimed != path:
        with open_dict(config.hydra.run):
            config.hydra.run.dir = str(claimed)
    return True


class RunGuard(Callback):
    """Hydra callback: one writer per run dir. A single run takes the lock before Hydra writes anything into
    ``hydra.run.dir`` (a refused second run cannot overwrite the first one's ``.hydra/``) and raises
    :class:`RunRefused` when a live run holds it; sweep jobs take their own dir's lock in the task.

    Holding the lock, it checks ``trainer.resume`` (:func:`nodex.train.resume.plan_resume`) before Hydra writes the
    run's ``.hydra/`` snapshot and log: a refused resume (and a completed run asked to resume) changes nothing on
    disk, and a run dir that did not exist before is removed again."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from nodex.errors import NodexError
        from nodex.train.lock import RunLock, RunLockedError
        from nodex.train.resume import AlreadyCompleted, plan_resume

        created = _claim_default_run_dir(config)
        try:
            lock = RunLock(str(config.hydra.run.dir)).acquire()
        except RunLockedError as exc:
            raise RunRefused(str(exc)) from None
        lock.created_dir = lock.created_dir or created
        _held_locks.append(lock)
        try:
            plan_resume(config, lock.path.parent)
        except (NodexError, AlreadyCompleted) as exc:
            release_run_locks()
            if lock.created_dir:
                lock.path.parent.rmdir()  # empty: the lock file was all that this run wrote
            raise RunRefused(str(exc), 0 if isinstance(exc, AlreadyCompleted) else 1) from None

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        release_run_locks()
