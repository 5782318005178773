"""The Hydra tasks of ``nodex train``, ``nodex eval`` and ``nodex plot``, and the task wrapper that turns every
failure of a job into one line (a single run's exit code, or a failed job that a sweep counts and goes on from).

Module level on purpose: launchers (joblib, submitit, Ray) pickle a task by reference and import this module in
their workers before composing the job's config, so importing it registers what composing needs.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from nodex.cli_errors import report_error
import nodex.config  # noqa: F401  (registers the config schemas that composing a job needs)
from nodex.runs import drop_snapshot, override_key, take_snapshot
from nodex.sweeps import local_workers, quiet_schema_warning, register_resolvers



def run_dir_suffix(name: str | None = None, experiment_name: str | None = None) -> str:
    """``${nodex_run_name:NAME,EXPERIMENT}`` at the end of the default run dir: ``-NAME`` for ``name=NAME``, else
    ``-EXPERIMENT`` for the experiment's ``experiment_name``, else nothing (``outputs/train/DATE/TIME``)."""
    from nodex.sweeps import dirname_safe

    chosen = name if name not in (None, "", "None") else experiment_name
    return f"-{dirname_safe(chosen)}" if chosen not in (None, "", "None") else ""


def register_run_name() -> None:
    """``${nodex_run_name:}`` (see :func:`run_dir_suffix`) for every process that resolves a run dir."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("nodex_run_name"):
        OmegaConf.register_new_resolver("nodex_run_name", run_dir_suffix)


quiet_schema_warning()  # at import: launcher workers unpickle this module before composing their job
register_resolvers()
register_run_name()
log = logging.getLogger("nodex")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def task_wrapper(*, records: bool) -> Callable[[Callable[[DictConfig, str], Any]], Callable[[DictConfig], Any]]:
    """A Hydra task from ``job(cfg, run_dir)`` (lightning-hydra-template's ``task_wrapper``): every failure ends
    here as one line on stderr, with the traceback of an unexpected one in the job's log file. A single run exits
    1 (130 after Ctrl-C, the signal's code after a preemption); a sweep's job returns ``None`` and the sweep goes
    on (its ``result.json`` says why). ``records``: the job keeps a ``result.json`` (train), so a failure that came
    before the run could record itself is recorded (:func:`nodex.runs.record_failure`)."""

    def wrap(job: Callable[[DictConfig, str], Any]) -> Callable[[DictConfig], Any]:
        @functools.wraps(job)
        def task(cfg: DictConfig) -> Any:
            from hydra.core.hydra_config import HydraConfig

            from nodex.errors import NodexError
            from nodex.train.preemption import Preempted, StoppedWhileStarting
            from nodex.train.resume import held_checkpoints

            run_dir = HydraConfig.get().runtime.output_dir
            try:
                return _run_job(job, cfg, run_dir)
            except StoppedWhileStarting as exc:  # the run dir exists, the run had not started: say so there
                if records and not held_checkpoints(Path(run_dir)):
                    _record_before_start(run_dir, cfg, str(exc), "interrupted")
                raise
            except Preempted as exc:
                message = f"{exc}; checkpoints/last.pt saved in {run_dir}; trainer.resume=auto continues it"
                _append_log(run_dir, f"STOPPED: {message}\n")  # train.log shows each attempt of a requeued job
                report_error(message)
                getattr(exc, "forward", lambda: None)()  # submitit's handler: requeue the job, then exit
                raise SystemExit(exc.exit_code) from None
            except NodexError as exc:
                if not _refused(exc):  # a refused resume leaves the dir's run, its log included, as it was
                    _append_log(run_dir, f"ERROR: {exc}\n")  # in the log file; the console gets it once, below
                _refused_in_sweep(exc)
                return _failed(str(exc), run_dir, records)
            except KeyboardInterrupt:
                if not records:
                    raise
                last = "member-*/checkpoints/last.pt" if (Path(run_dir) / "member-0").is_dir() else "checkpoints/last.pt"
                saved = any(Path(run_dir).glob(last))
                report_error(f"interrupted; last checkpoint saved in {run_dir}/{last}" if saved
                             else "interrupted before the first checkpoint; nothing to resume")
                raise SystemExit(130) from None
            except Exception as exc:  # not raised by nodex: one line here, the traceback in the log
                from nodex.train.setup import out_of_memory

                _log_traceback(run_dir)
                error = str(out_of_memory(exc) or f"{type(exc).__name__}: {exc}".splitlines()[0])
                if records:
                    _record_before_start(run_dir, cfg, error, "failed")
                return _failed(error, run_dir, records)

        return task

    return wrap


def _record_before_start(run_dir: str, cfg: DictConfig, error: str, status: str) -> None:
    """The ``result.json`` of a run that ended before it could record itself (one already there is kept)."""
    from omegaconf import OmegaConf

    from nodex.runs import record_failure

    record_failure(Path(run_dir), OmegaConf.to_container(cfg, resolve=False), error, status=status, replace=False)


def _run_job(job: Callable[[DictConfig, str], Any], cfg: DictConfig, run_dir: str) -> Any:
    """``job(cfg, run_dir)``; a Hydra snapshot the job did not take in (refused: the run dir's own ``.hydra/`` stays,
    see :func:`nodex.runs.take_snapshot`) is removed when it ends, however it ends."""
    try:
        return job(cfg, run_dir)
    finally:
        drop_snapshot(Path(run_dir))


def _refused(exc: Exception) -> bool:
    """``exc`` refused a job whose dir holds another run (that run is kept as it was)."""
    from nodex.train.resume import ResumeRefused

    return isinstance(exc, ResumeRefused)


def _refused_in_sweep(exc: Exception) -> None:
    """A sweep job whose resume did not fit its dir's run was refused (the run is kept), not failed: tell the sweep's
    ledger (a refusal by the run lock the ledger reads off the lock itself)."""
    if _refused(exc) and _is_multirun():
        from nodex.sweep_ledger import job_outcome

        # a sweep job's dir is a subdir of hydra.sweep.dir: a new run goes into another sweep dir
        job_outcome("refused", str(exc).replace("hydra.run.dir", "hydra.sweep.dir"))


def _failed(message: str, run_dir: str, records: bool) -> None:
    """A job's failure: a sweep goes on (a train job's ``result.json`` says why; an eval or plot job, which keeps
    none, tells the sweep's ledger); a single run exits 1 after the error line on stderr, its run dir (when it keeps
    a ``result.json``) on stdout as after a completed run (stderr stays the one line that the faults' tests pin)."""
    if _is_multirun():
        if not records:
            from nodex.sweep_ledger import job_outcome

            job_outcome("failed", message)
        return None
    report_error(message)
    if records:
        print(run_dir_line(run_dir))
    raise SystemExit(1)


def _refused_command(exc: Exception, run_dir: str) -> None:
    """An eval or plot command-line mistake (``exc``): exit 2 as a bad key is; in a sweep, that job failed."""
    _append_log(run_dir, f"ERROR: {exc}\n")
    if _is_multirun():
        _failed(str(exc), run_dir, records=False)
        return
    report_error(str(exc))
    raise SystemExit(2) from None


def run_dir_line(run_dir: str) -> str:
    """``nodex: run dir: PATH``, the last line of a single ``nodex train`` run; PATH relative to the working
    directory when it lies below it."""
    inside = Path(run_dir).resolve().is_relative_to(Path.cwd().resolve())
    return f"nodex: run dir: {os.path.relpath(run_dir) if inside else run_dir}"


@task_wrapper(records=True)
def train_job(cfg: DictConfig, run_dir: str) -> float | None:
    """The Hydra task of ``nodex train`` (module level: launchers pickle it by reference); returns the monitored
    metric (``cfg.monitor``) to a sweeper."""
    from hydra.core.hydra_config import HydraConfig

    from nodex.runs import run_record
    from nodex.train.lock import RunLock
    from nodex.train.resume import AlreadyCompleted
    from nodex.train.run import run_train

    hc = HydraConfig.get()
    progress = cfg.trainer.get("progress", "auto")
    progress = (not _is_multirun() and sys.stderr.isatty()) if progress == "auto" else bool(progress)
    job = {"progress": progress, "workers": local_workers(hc), "command": _job_command(hc)}
    if _is_multirun():  # a single run's dir is locked by the RunGuard callback, before Hydra writes into it
        try:
            with RunLock(run_dir):
                result = run_train(cfg, run_dir, **job)
        except AlreadyCompleted as done:  # a requeued or repeated job whose run had finished: nothing to do
            from nodex.sweep_ledger import job_outcome

            log.info("%s", done)
            job_outcome("completed", str(done))
            result = run_record(Path(run_dir))
    else:
        result = run_train(cfg, run_dir, **job)
        print(run_dir_line(run_dir))
    monitor = cfg.get("monitor")
    return float(result["metrics"][monitor]) if monitor and monitor in result["metrics"] else None


def _job_command(hc: Any) -> str:
    """This job's own command: ``nodex train`` and its overrides (in a sweep, this job's values only)."""
    import shlex

    return " ".join(["nodex", str(hc.job.name), *(shlex.quote(str(o)) for o in hc.overrides.task)])


@task_wrapper(records=False)
def eval_job(cfg: DictConfig, run_dir: str) -> None:
    """The Hydra task of ``nodex eval``: metrics of a checkpoint, printed and written to ``eval.json``."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from nodex.errors import ConfigError
    from nodex.train.evaluation import EvalRefused, check_eval_keys, run_eval

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("nodex eval needs ckpt=RUN_DIR or ckpt=PATH/TO/checkpoint.pt (a run of nodex train)")
    take_snapshot(Path(run_dir))  # an eval dir used before: this evaluation's snapshot replaces the last one's
    lines = list(HydraConfig.get().overrides.task)
    overrides = _value_overrides(lines, cfg, skip={"ckpt", "split", "which", "device"})
    try:
        check_eval_keys(lines)
        payload = run_eval(cfg, overrides, run_dir, _group_choices(lines, cfg))
    except EvalRefused as exc:  # a command-line mistake: exit 2, as a bad key is
        return _refused_command(exc, run_dir)
    for key, value in payload["metrics"].items():
        print(f"{key}: {value:.6g}")


PLOT_HELP = """usage: nodex plot ckpt=RUN_DIR_OR_CHECKPOINT [which=last|best] [figures=NAME[,NAME...]]
                  [format=png|pdf|svg] [dpi=100] [limits=[X1_FROM,X1_TO,X2_FROM,X2_TO]] [out=DIR]

Redraw a trained run's figures from its checkpoint: the model and the run's own data splits are restored, the
figures that fit the model are drawn (or only the named ones) and written to out, by default
RUN/plots/redrawn-last/ (redrawn-best/ for which=best). The run's training-time plots/*.png are never replaced.
Each file written is printed, then the folder.

figures: decision_map, trajectories, state_space, vector_field, parameters_evolution, horizon,
  regression_trajectories, tracking, cnf_condition_<k>, cnf_samples, training_curves (those that fit the model;
  a name that does not fit is refused with the list of those that do)

examples:
  nodex plot ckpt=outputs/train/2026-11-27/21-28-10
  nodex plot ckpt=RUN figures=decision_map,state_space format=pdf
  nodex plot ckpt=RUN which=best format=png dpi=300 out=paper/figures
  nodex plot ckpt=RUN figures=decision_map limits=[-3,3,-3,3]   (the 2-D figures' plotted range)"""


def plot_arguments(args: list[str]) -> list[str]:
    """``figures=a,b`` names a list of figures, not a sweep (outside ``--multirun``): ``figures=[a,b]``."""
    if "-m" in args or "--multirun" in args:
        return args
    return [f"figures=[{a.partition('=')[2]}]" if a.startswith("figures=") and "," in a
            and not a.partition("=")[2].startswith(("[", "'", '"')) else a for a in args]


@task_wrapper(records=False)
def plot_job(cfg: DictConfig, run_dir: str) -> None:
    """The Hydra task of ``nodex plot``: a run's figures redrawn from its checkpoint; prints each file written and
    the folder."""
    from omegaconf import OmegaConf

    from nodex.errors import ConfigError
    from nodex.viz.redraw import PlotRefused, run_plot

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("nodex plot needs ckpt=RUN_DIR or ckpt=PATH/TO/checkpoint.pt (a run of nodex train)")
    take_snapshot(Path(run_dir))  # a plot dir used before: this call's snapshot replaces the last one's
    try:
        done = run_plot(cfg)
    except PlotRefused as exc:  # a command-line mistake: exit 2, as a bad key is
        return _refused_command(exc, run_dir)
    for path in done["written"]:
        print(_shown(path))
    replaced = f"; {done['replaced']} file(s) of an earlier redraw replaced" if done["replaced"] else ""
    print(f"nodex: {len(done['written'])} figure(s) of {_shown(done['checkpoint'])} in {_shown(done['out'])}{replaced}")


def _shown(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    inside = Path(path).resolve().is_relative_to(Path.cwd().resolve())
    return os.path.relpath(path) if inside else str(path)


def _log_traceback(run_dir: str) -> None:
    """The current exception's traceback into the job's log file, ``train.log`` / ``eval.log`` (and to stderr when
    ``NODEX_DEBUG=1``)."""
    import traceback

    text = traceback.format_exc()
    _append_log(run_dir, text)
    if os.environ.get("NODEX_DEBUG") == "1":
        print(text, file=sys.stderr)


def _append_log(run_dir: str, text: str) -> None:
    """``text`` at the end of the job's log file (``train.log`` / ``eval.log``), not on the console."""
    from hydra.core.hydra_config import HydraConfig

    try:
        with open(Path(run_dir) / f"{HydraConfig.get().job.name}.log", "a") as fh:
            fh.write(text)
    except OSError:
        pass


def _value_overrides(lines: list[str], cfg: DictConfig, skip: set[str]) -> dict:
    """The ``key=value`` overrides given on the command line, with values as Hydra composed them."""
    from omegaconf import OmegaConf

    out = {}
    for line in lines:
        key = override_key(line)
        if key in skip or "." not in key or key.startswith("hydra."):
            continue
        out[key] = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}), resolve=True)["v"]
    return out




def _group_choices(lines: list[str], cfg: DictConfig) -> dict[str, str]:
    """The config groups chosen on the command line: ``solver=rk4 model=galnode`` -> ``{"solver": "rk4", ...}``."""
    from omegaconf import OmegaConf

    out = {}
    for line in map(str, lines):
        key = override_key(line)
        if "=" in line and "." not in key and "/" not in key and OmegaConf.is_dict(cfg.get(key)):
            out[key] = line.split("=", 1)[1]
    return out
