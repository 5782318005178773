"""Build a run from a composed config and execute it: ``run_train`` (``nodex eval``: :mod:`nodex.train.evaluation`).

Data flow: config -> (data, task, model, optimizer) per member -> one :class:`Trainer` -> logs,
checkpoints and ``result.json``. Errors surface as :class:`~nodex.errors.NodexError` with one-line
messages; the run directory records them in ``result.json`` (``status: failed``).

A seed ensemble (``trainer.ensemble=K``, see :mod:`nodex.train.members`) trains the seeds
``seed, ..., seed+K-1`` in one batched solve; member ``k`` is built exactly as ``nodex train ...
seed=SEED+k`` would build it (its own data splits, its own initialisation). Layout of ``RUN_DIR``::

    ensemble.json          summary: status, seeds, member dirs, mean/std and per-member metrics
    member-0/ ... member-{K-1}/
                           what a separate run with seed SEED+k writes: result.json (same
                           schema, seed SEED+k, config with seed SEED+k and trainer.ensemble=1,
                           plus "ensemble_member"), metrics.jsonl, TensorBoard events, plots/,
                           checkpoints/{last,best}.pt (the member's plain model and optimizer
                           state: ``nodex eval ckpt=RUN_DIR/member-k`` and
                           ``trainer.resume=RUN_DIR/member-k`` work unchanged), and .hydra/
                           (its config.yaml; the parent's hydra.yaml; overrides.yaml without
                           trainer.ensemble, with seed=SEED+k)

``RUN_DIR`` gets no ``result.json`` of its own (a report would count the ensemble twice),
except when the run fails before any member directory exists.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from nodex.data import data_name
from nodex.errors import CheckpointError, NodexError
from nodex.models import count_parameters
from nodex.train.logs import RunLogger
from nodex.train.loop import Trainer, evaluate
from nodex.train.members import (
    Member, Members, StackedMembers, ensemble_size, hydra_snapshot, member_config,
)
from nodex.runs import new_result, new_summary, record_failure, run_record, take_resumed_snapshot, write_json
from nodex.train.results import finish_member, finish_summary, metadata_markdown
from nodex.train.setup import (
    Pipeline, build_optimizer, check_data_size, out_of_memory, select_device, validate_cuda_graph, validate_trainer,
)
from nodex.train.preemption import Preempted, StopRequest
from nodex.train.resume import ResumeRefused, apply_learning_rate, held_checkpoints, load_resume, plan_resume
from nodex.train.threads import choose_threads

log = logging.getLogger("nodex")


def run_train(cfg: DictConfig, run_dir: str | Path, *, progress: bool = False, workers: int = 1,
              command: str | None = None) -> dict[str, Any]:
    """Train per ``cfg`` into ``run_dir``; returns the ``result.json`` payload (for an ensemble:
    the ``ensemble.json`` summary, whose ``metrics`` are the members' means).

    Args:
        workers: jobs of a local sweep running at once (``trainer.num_threads=auto`` shares the CPUs).
        command: the job's own command line, recorded in ``result.json`` (default: this process's argv).

    Raises:
        NodexError: bad config, solver failure, divergence (after ``result.json`` records it;
            in an ensemble every member's, and the message names the member).
        ResumeRefused: ``trainer.resume`` does not fit the run dir's run (its record is kept).
        AlreadyCompleted: ``trainer.resume=auto`` on a run that completed its steps (nothing is written).
        KeyboardInterrupt: after ``last.pt`` is saved and the run is marked ``interrupted``.
        Preempted: SIGTERM (or submitit's signal) arrived; ``last.pt`` is saved after the last whole step and the
            run is marked ``interrupted`` with the signal as reason.
    """
    ensemble = cfg.trainer.get("ensemble", 1) != 1  # validated in start(): a bad value is recorded like any failure
    try:
        resume = plan_resume(cfg, Path(run_dir))
    except CheckpointError as exc:  # refused before anything is written: a run's existing record is kept
        if not run_record(Path(run_dir)):
            TrainRun(cfg, Path(run_dir), ensemble).failed_before_start(str(exc))
            raise
        raise ResumeRefused(str(exc)) from None
    run = TrainRun(cfg, Path(run_dir), ensemble, workers=workers, command=command)
    try:
        with StopRequest() as stop:  # the final test and figures too: a stop signal there waits for the record
            trainer = run.start(progress, resume)
            trainer.fit(run.optimizer, run.scheduler, stop)
            run.test()
    except Preempted as exc:
        run.interrupted(f"{exc}; it continues with trainer.resume=auto (a requeued job does that by itself)")
        exc.forward = stop.forward
        raise
    except KeyboardInterrupt:
        run.interrupted()
        raise
    except Exception as exc:
        error = exc if isinstance(exc, NodexError) else out_of_memory(exc)
        message = str(error) if error is not None else f"{type(exc).__name__}: {exc}"
        if not run.owns_dir:  # refused before it took over a dir holding a trained run: that run's record stays
            raise ResumeRefused(message) from None
        run.failed(message)
        if error is not None and error is not exc:
            raise error from None
        raise
    finally:
        run.finish()
    return run.payload()


class TrainRun:
    """One ``nodex train``: its members (one, or ``K`` seeds), optimizer, trainer and write-up."""

    def __init__(self, cfg: DictConfig, run_dir: Path, ensemble: bool, *, workers: int = 1,
                 command: str | None = None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg, self.run_dir = cfg, run_dir
        self.workers, self.command = workers, command
        self.started = time.perf_counter()
        self.resolved = OmegaConf.to_container(cfg, resolve=True)
        self.summary = new_summary(self.resolved) if ensemble else None
        self.members: list[Member] = []
        self.trainer: Trainer | None = None
        self.error: str | None = None
        self.status = "failed"  # of a run that ends before any member exists
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        # a dir that holds a trained run is this run's only once it could start (built, resumed): until then a
        # failure writes nothing there (its .hydra, records and checkpoints stay the earlier run's)
        self.owns_dir = not held_checkpoints(run_dir)

    def start(self, progress: bool, resume: Path | None = None) -> Trainer:
        """Validate, build every member, the optimizer (resumed from ``resume``, :func:`plan_resume`'s answer) and the
        loggers."""
        cfg = self.cfg
        K = ensemble_size(cfg)
        validate_trainer(cfg.trainer)
        check_data_size(cfg.data, K)
        device = select_device(cfg.trainer.get("device", "auto"))
        pipes = self._build_members(K, device)
        settings = pipes[0].settings  # a stack's too (its template is member 0)
        validate_cuda_graph(cfg, settings, device)
        data = self.members[0].data
        batch = cfg.trainer.get("batch_size") or data.train[0].shape[0]
        threads = choose_threads(cfg.trainer.get("num_threads"), self.members[0].model, data.train[0], batch * K,
                                 workers=self.workers)
        steps = Trainer.total_steps(cfg.trainer, data)
        for m in self.members:
            m.result.update(threads=threads, device=str(device), params=count_parameters(m.model))
        ckpts = load_resume(resume, self.members, device) if resume is not None else None
        members = Members(self.members) if K == 1 else StackedMembers(self.members)  # stacks the resumed weights
        self.optimizer, self.scheduler = build_optimizer(cfg.trainer, members.model, steps)
        if ckpts is not None:
            _resume_optimizer(resume, ckpts, members, self.optimizer, self.scheduler, float(cfg.trainer.optim.lr))
        self._take_dir()
        for m in self.members:
            self._open_logs(m)
        if self.summary is not None:
            self.summary["shared_step_sizes"] = not settings.is_fixed_step and not settings.per_member_steps
        self._log_start(settings, device)
        self.trainer = Trainer(members, cfg.trainer, settings.describe(), progress)
        return self.trainer

    def _build_members(self, K: int, device: torch.device) -> list[Pipeline]:
        """Member ``k``: the config, run directory, data, task and model of seed ``SEED+k``'s run
        (``K = 1``: the run itself, in ``run_dir``)."""
        pipes = []
        for k in range(K):
            mcfg, resolved, mdir = self.cfg, self.resolved, self.run_dir
            if K > 1:
                mcfg = member_config(self.resolved, k)
                resolved = OmegaConf.to_container(mcfg, resolve=True)
                mdir = self.run_dir / f"member-{k}"
            result = new_result(int(mcfg.seed), resolved)
            if self.command is not None:
                result["command"] = self.command
            if K > 1:
                result["ensemble_member"] = {"index": k, "size": K, "parent": str(self.run_dir)}
            pipe = Pipeline(mcfg, device)
            spec = {"input_shape": list(pipe.data.input_shape), "n_outputs": int(pipe.task.n_outputs)}
            member = Member(k, pipe.model, pipe.task, pipe.data, mcfg, resolved, mdir, spec, result)
            member.state.batch_gen.manual_seed(int(mcfg.seed))
            self.members.append(member)
            pipes.append(pipe)
        if self.summary is not None:
            self.summary.update(size=K, seeds=[m.seed for m in self.members], device=str(device),
                                members=[m.run_dir.name for m in self.members])
        return pipes

    def _take_dir(self) -> None:
        """The run could start: this job's Hydra snapshot becomes the run dir's ``.hydra`` (and each member's)."""
        take_resumed_snapshot(self.run_dir)
        if len(self.members) > 1:
            for m in self.members:
                m.run_dir.mkdir(parents=True, exist_ok=True)
                hydra_snapshot(self.run_dir, m.run_dir, m.cfg)
        self.owns_dir = True

    def _open_logs(self, m: Member) -> None:
        m.logger = RunLogger(m.run_dir, tensorboard=self.cfg.logger.get("tensorboard", True), append=m.state.step > 0,
                             keep_until=m.state.step if m.state.step > 0 else None)
        m.logger.text("run/metadata", metadata_markdown(m.result))
        if self.cfg.trainer.get("plots", True):
            from nodex.viz import diagnostics

            def plot(step: int) -> None:
                try:
                    diagnostics(m.model, m.data, m.task, m.logger, step)
                except OSError as exc:  # disk full, read-only: the figures are lost, the run goes on
                    warning = f"figures of step {step} not written ({exc}); the run is unaffected"
                    m.result.setdefault("warnings", []).append(warning)
                    log.warning(warning)

            m.plot = plot

    def _log_start(self, settings: Any, device: torch.device) -> None:
        cfg, first, last = self.cfg, self.members[0], self.members[-1]
        if self.summary is None:
            log.info("%s | %s params | %s | %s | device %s", cfg.model.name, first.result["params"], data_name(cfg.data),
                     settings.describe(), device)
            return
        log.info("%s | ensemble of %d (seeds %d..%d) | %s params each | %s | %s%s | device %s", cfg.model.name,
                 len(self.members), first.seed, last.seed, first.result["params"], data_name(cfg.data), settings.describe(),
                 " (members share step sizes)" if self.summary["shared_step_sizes"] else "", device)

    def test(self) -> None:
        """Every member's test metrics (logged and recorded), then its final figures."""
        self.trainer.members.sync()
        for m in self.members:
            test = evaluate(m.model, m.task, m.data.test, self.cfg.trainer.get("eval_batch_size"))
            m.result["metrics"] = {f"test/{k}": v for k, v in test.items()}
            m.logger.scalars(m.state.step, m.result["metrics"])
            m.result["status"] = "completed"
        for m in self.members:
            if m.plot is not None:
                m.plot(m.state.step)
        if self.summary is not None:
            self.summary["status"] = "completed"

    def interrupted(self, reason: str | None = None) -> None:
        step = self.members[0].state.step if self.members else 0
        for m in self.members:
            m.result["status"] = "interrupted"
            if self.summary is None:
                last = m.run_dir / "checkpoints" / "last.pt"
                m.result["error"] = reason or (f"interrupted at step {step}; resume with trainer.resume={last}"
                                               if last.is_file() else
                                               f"interrupted at step {step}, before the first checkpoint; "
                                               "nothing to resume")
            else:
                m.result["error"] = f"interrupted at step {step} (ensemble {self.run_dir})"
        if self.summary is not None:
            self.summary["status"] = "interrupted"
            self.summary["error"] = reason or (f"interrupted at step {step}; resume the ensemble with "
                                               f"trainer.resume={self.run_dir} (or trainer.resume=auto in this dir)")
        self.error, self.status = f"interrupted at step {step}", "interrupted"

    def failed_before_start(self, message: str) -> None:
        """Record a run refused before it started (in a dir that holds no run's record yet: a sweep counts it)."""
        self.failed(message)
        self.finish()

    def failed(self, message: str) -> None:
        self.error = message
        for m in self.members:
            m.result["error"] = message
        if self.summary is not None:
            self.summary["error"] = message

    def finish(self) -> None:
        """Write every member's ``result.json`` (closing its logger), then ``ensemble.json``;
        a run that failed before any member existed records it in ``run_dir/result.json``."""
        if not self.owns_dir:
            return
        wall = time.perf_counter() - self.started
        totals = self.trainer.member_totals if self.trainer is not None else [{"steps": 0}] * len(self.members)
        for m in self.members:  # a member that failed before its dir was taken (a fresh run's) records it there
            _unless_disk_full(lambda: (m.run_dir.mkdir(parents=True, exist_ok=True),
                                       finish_member(m, totals[m.index], wall)))
        if self.summary is not None:
            finish_summary(self.summary, self.members, wall, self.trainer.totals if self.trainer else {"steps": 0})
            _unless_disk_full(lambda: write_json(self.run_dir / "ensemble.json", self.summary))
        if not self.members:
            record_failure(self.run_dir, self.resolved, self.error, status=self.status, wall_time_s=wall)

    def payload(self) -> dict[str, Any]:
        """The run's ``result.json`` (an ensemble's ``ensemble.json``), after logging its metrics."""
        payload = self.members[0].result if self.summary is None else self.summary
        head = "done" if self.summary is None else f"done (mean of {len(self.members)})"
        log.info("%s: %s", head, ", ".join(f"{k}={v:.4g}" for k, v in payload["metrics"].items()))
        return payload


def _unless_disk_full(write: Callable[[], None]) -> None:
    """``write()`` a run's record; when even that fails (disk full), say so in the log and let the error that ended
    the run (or the run's success) be what the caller sees."""
    try:
        write()
    except OSError as exc:
        log.error("could not record the run's outcome (%s)", exc)


def _resume_optimizer(path: Path, ckpts: list[dict[str, Any]], members: Members, optimizer: torch.optim.Optimizer,
                      scheduler: Any, lr: float) -> None:
    """The optimizer (stacked from the members' own states in an ensemble) and scheduler of the checkpoints, the
    learning-rate schedule continuing where it stopped; a ``lr`` other than the checkpoint run's is a new base rate.

    Raises:
        CheckpointError: the optimizer state does not fit this optimizer.
    """
    try:
        optimizer.load_state_dict(members.optimizer_from_members([c["optimizer"] for c in ckpts]))
    except (RuntimeError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0][:120]
        raise CheckpointError(f"trainer.resume={path}: checkpoint does not fit this model/optimizer ({reason}); "
                              "resume with the run's own config") from None
    if scheduler is not None and ckpts[0].get("scheduler"):
        scheduler.load_state_dict(ckpts[0]["scheduler"])
    saved_lr = float(ckpts[0]["config"]["trainer"]["optim"]["lr"])  # load_checkpoint upgraded it
    log.info("resumed from %s at step %d", path, int(ckpts[0]["step"]))
    if apply_learning_rate(optimizer, scheduler, lr, saved_lr):
        log.info("trainer.optim.lr=%g replaces the checkpoint run's %g: the schedule goes on from its position at "
                 "the new base rate (lr now %g)", lr, saved_lr, optimizer.param_groups[0]["lr"])
