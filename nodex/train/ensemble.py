"""Seed ensembles: ``nodex train ... trainer.ensemble=K`` trains the seeds ``seed, ..., seed+K-1``
in one batched solve.

Member ``k`` is built exactly as ``nodex train ... seed=SEED+k`` would build it (its own data
splits from ``build_data(cfg.data, SEED+k)``, its own initialisation); the members' parameters
are then stacked and trained together as an :class:`~nodex.models.ensemble.EnsembleNeuralODE`
(every slot evaluated for all members at once, one solve of the ``(K, B, ...)`` state). The loss is the sum
of the members' losses, so each member's gradient, and its Adam/SGD update (elementwise), is
the one its own run would compute; ``trainer.grad_clip`` clips each member by its own norm.

- Fixed-step solvers: each member reproduces its separate run (to float rounding).
- Adaptive solvers: the members **share the step sizes** (the error norm is taken over the
  stacked state), so a member takes the steps the hardest member needs; NFE is that of the
  batched solve. Under ``solver.sensitivity=adjoint`` the stacked parameters are the adjoint's
  parameters.
- Anything that draws from torch's global RNG during training is not reproduced per member.

Layout of ``RUN_DIR``::

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
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from nodex.errors import ConfigError, NodexError
from nodex.models import count_parameters
from nodex.models.ensemble import EnsembleNeuralODE, member_output
from nodex.train.loop import LoopState, StepStats, Trainer, evaluate, solver_failures
from nodex.train.logs import RunLogger
from nodex.train.run import _hparams, _metadata_markdown, _write_json
from nodex.train.setup import Pipeline, build_optimizer, select_device, validate_trainer, versions
from nodex.train.threads import choose_threads

log = logging.getLogger("nodex")


@dataclass
class Member:
    """One member: its config, what :class:`Pipeline` built for it, and its run directory."""

    index: int
    cfg: DictConfig
    resolved: dict[str, Any]
    run_dir: Path
    pipe: Pipeline
    result: dict[str, Any]
    state: LoopState = field(default_factory=LoopState)
    logger: RunLogger | None = None
    trainer: Trainer | None = None

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)


def ensemble_size(cfg: DictConfig) -> int:
    """``trainer.ensemble`` validated.

    Raises:
        ConfigError: not a positive integer, a model kind that cannot be stacked, or resume.
    """
    value = cfg.trainer.get("ensemble", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"trainer.ensemble={value!r} must be a positive integer (1: one run; K > 1: seeds seed..seed+K-1 in one batched solve)")
    kind = cfg.model.get("kind", "neural_ode")
    if value > 1 and kind != "neural_ode":
        raise ConfigError(f"trainer.ensemble={value} needs model.kind=neural_ode (got {kind}); run the seeds separately: nodex train --multirun seed=0,1,2")
    if value > 1 and cfg.trainer.get("resume"):
        raise ConfigError(f"trainer.resume is not supported with trainer.ensemble={value}; resume one member with trainer.resume=RUN_DIR/member-k (trainer.ensemble=1)")
    return value


def member_config(resolved: dict[str, Any], k: int) -> DictConfig:
    """The config of the separate run that member ``k`` reproduces: ``seed + k``, ``ensemble=1``."""
    cfg = OmegaConf.create(resolved)
    cfg.seed = int(resolved["seed"]) + k
    cfg.trainer.ensemble = 1
    return cfg


def member_optimizer_state(optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
    """Member ``k``'s slice of the stacked optimizer state: the state dict its own optimizer
    (same parameter order) would have. Per-parameter buffers shaped like the stacked
    parameter are sliced (and copied, so a save holds only the slice); scalars (``step``) kept."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    full = optimizer.state_dict()
    state = {}
    for i, entries in full["state"].items():
        shape = params[i].shape
        state[i] = {key: (v[k].clone() if torch.is_tensor(v) and v.shape == shape else v) for key, v in entries.items()}
    return {"state": state, "param_groups": full["param_groups"]}


def clip_members(params: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` applied to each member (slice ``k`` of every stacked gradient) alone."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    K = grads[0].shape[0]
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.reshape(K, -1), dim=1) for g in grads]), dim=0)
    coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.reshape(K, *([1] * (g.dim() - 1))).to(g.dtype))


class EnsembleFit:
    """The training loop for stacked members. Each member keeps its own :class:`Trainer`
    (logging, validation, best/last checkpoints, finiteness checks, batches), fed with the
    member's current parameters at every log point; only the step itself is batched."""

    def __init__(self, model: EnsembleNeuralODE, members: list[Member], cfg: DictConfig, solver: str) -> None:
        self.model, self.members, self.cfg, self.solver = model, members, cfg, solver
        self.clip = float(cfg.grad_clip) if cfg.get("grad_clip") else None

    def _each(self, fn: Callable[[Member], Any]) -> None:
        """``fn(member)`` for every member; an error names the member it came from."""
        for m in self.members:
            try:
                fn(m)
            except NodexError as exc:
                raise type(exc)(f"member {m.index} (seed {m.seed}): {exc}") from None

    def sync(self) -> None:
        """Copy the stacked parameters into the members' plain models."""
        for m in self.members:
            self.model.load_member(m.index, m.pipe.model)

    def fit(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        cfg, members = self.cfg, self.members
        first = members[0].trainer
        log_every, val_every = max(1, int(cfg.log_every)), int(cfg.val_every or 0)
        ckpt_every = int(cfg.checkpoint_every or 0)
        scheduler_per_epoch = cfg.scheduler.get("unit", "step") == "epoch"
        steps_per_epoch = Trainer.steps_per_epoch(cfg, first.data)
        stats = [StepStats() for _ in members]
        bar = first._progress_bar(members[0].state.step)
        batches = [m.trainer._batches(m.state) for m in members]
        step = members[0].state.step
        try:
            while step < first.max_steps:
                pairs = [next(b) for b in batches]
                X, Y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
                losses, outs, nfe_f, nfe_b = self.train_step(X, Y, optimizer, step + 1)
                step += 1
                if scheduler is not None and (not scheduler_per_epoch or step % steps_per_epoch == 0):
                    scheduler.step()
                for m, st in zip(members, stats):
                    m.state.step = step
                    st.steps += 1
                    st.samples += X.shape[1]
                    st.nfe_forward += nfe_f
                    st.nfe_backward += nfe_b
                    m.trainer.totals["steps"] += 1
                    m.trainer.totals["nfe_forward"] += nfe_f
                    m.trainer.totals["nfe_backward"] += nfe_b
                    loss, parts = losses[m.index]
                    out = outs[m.index]
                    st.add({"loss": loss, **parts, **m.pipe.task.metrics(out, Y[m.index])})
                    for key, value in out.extras.items():
                        st.add({f"{key}_mean": value.float().mean()})
                last = step == first.max_steps
                if step % log_every == 0 or last:
                    self.sync()
                    self._each(lambda m: m.trainer._log_train(m.state, stats[m.index], optimizer, bar if m.index == 0 else None))
                    stats = [StepStats() for _ in members]
                    if (val_every and step % val_every == 0) or last:
                        self._each(lambda m: m.trainer._validate(m.state))
                    if ckpt_every and (step % ckpt_every == 0) or last:
                        self._each(lambda m: m.trainer._checkpoint(m.state, "last"))
        except KeyboardInterrupt:
            self.sync()
            self._each(lambda m: m.trainer._check_finite_params(m.state))
            self._each(lambda m: m.trainer._checkpoint(m.state, "last"))
            raise
        finally:
            if bar is not None:
                bar.close()

    def train_step(self, X: torch.Tensor, Y: torch.Tensor, optimizer: torch.optim.Optimizer, step: int):
        """One step for all members on ``X`` ``(K, B, ...)``, ``Y`` ``(K, B, ...)``; returns the
        members' ``(loss, parts)``, their outputs and the batched solve's forward/backward NFE."""
        model = self.model
        model.nfe.reset()
        with solver_failures(step, self.solver):
            out = model(X)
            nfe_f = model.nfe.count
            outs = [member_output(out, m.index) for m in self.members]
            losses = [m.pipe.task.loss(o, Y[m.index]) for m, o in zip(self.members, outs)]
            total = torch.stack([loss for loss, _ in losses]).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
        if self.clip:
            clip_members(list(model.parameters()), self.clip)
        optimizer.step()
        return losses, outs, nfe_f, model.nfe.count - nfe_f


def _new_result(cfg: DictConfig, resolved: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "failed", "error": None, "metrics": {}, "nfe_forward": None, "nfe_backward": None,
        "params": None, "steps": 0, "wall_time_s": None, "device": None, "versions": versions(),
        "config": resolved, "seed": int(cfg.seed), "command": " ".join(sys.argv),
    }


def _build_members(cfg: DictConfig, resolved: dict[str, Any], K: int, run_dir: Path, device: torch.device) -> list[Member]:
    members = []
    for k in range(K):
        mcfg = member_config(resolved, k)
        mresolved = OmegaConf.to_container(mcfg, resolve=True)
        mdir = run_dir / f"member-{k}"
        mdir.mkdir(parents=True, exist_ok=True)
        _hydra_snapshot(run_dir, mdir, mcfg)
        result = _new_result(mcfg, mresolved)
        result["ensemble_member"] = {"index": k, "size": K, "parent": str(run_dir)}
        members.append(Member(k, mcfg, mresolved, mdir, Pipeline(mcfg, device), result))
    return members


def _hydra_snapshot(run_dir: Path, mdir: Path, mcfg: DictConfig) -> None:
    """``member-k/.hydra``: the member's config, the parent's ``hydra.yaml`` and its overrides
    with ``trainer.ensemble`` dropped and ``seed=SEED+k`` (what ``--multirun seed=...`` records)."""
    dest = mdir / ".hydra"
    dest.mkdir(exist_ok=True)
    OmegaConf.save(mcfg, dest / "config.yaml")
    src = run_dir / ".hydra"
    if (src / "hydra.yaml").is_file():
        shutil.copyfile(src / "hydra.yaml", dest / "hydra.yaml")
    overrides = list(OmegaConf.load(src / "overrides.yaml")) if (src / "overrides.yaml").is_file() else []
    kept = [str(o) for o in overrides if str(o).split("=", 1)[0].lstrip("+~") not in ("seed", "trainer.ensemble")]
    OmegaConf.save(OmegaConf.create([*kept, f"seed={int(mcfg.seed)}"]), dest / "overrides.yaml")


def run_ensemble(cfg: DictConfig, run_dir: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Train ``trainer.ensemble`` seeds of ``cfg`` in one batched solve into ``run_dir``
    (layout in the module docstring); returns the ``ensemble.json`` summary, whose ``metrics``
    are the members' means.

    Raises:
        NodexError: bad config, solver failure, divergence (after every member's
            ``result.json`` records it; the message names the member).
        KeyboardInterrupt: after every member's ``last.pt`` is saved.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    summary: dict[str, Any] = {
        "status": "failed", "error": None, "kind": "ensemble", "size": None, "seeds": [], "members": [],
        "metrics": {}, "metrics_std": {}, "member_metrics": [], "steps": 0, "wall_time_s": None,
        "nfe_forward": None, "nfe_backward": None, "shared_step_sizes": None, "device": None,
        "versions": versions(), "config": resolved, "command": " ".join(sys.argv),
    }
    members: list[Member] = []
    fit: EnsembleFit | None = None
    try:
        K = ensemble_size(cfg)
        validate_trainer(cfg.trainer)
        device = select_device(cfg.trainer.get("device", "auto"))
        members = _build_members(cfg, resolved, K, run_dir, device)
        summary.update(size=K, seeds=[m.seed for m in members], members=[m.run_dir.name for m in members], device=str(device))
        model = EnsembleNeuralODE([m.pipe.model for m in members])
        settings = model.settings
        summary["shared_step_sizes"] = not settings.is_fixed_step
        data = members[0].pipe.data
        batch = cfg.trainer.get("batch_size") or data.train[0].shape[0]
        threads = choose_threads(cfg.trainer.get("num_threads"), members[0].pipe.model, data.train[0], batch * K)
        optimizer, scheduler = build_optimizer(cfg.trainer, model, Trainer.total_steps(cfg.trainer, data))
        for m in members:
            m.result.update(threads=threads, device=str(device), params=count_parameters(m.pipe.model))
            m.state.batch_gen.manual_seed(m.seed)
            m.logger = RunLogger(m.run_dir, tensorboard=cfg.logger.get("tensorboard", True))
            m.logger.text("run/metadata", _metadata_markdown(m.result, m.pipe))
            m.trainer = Trainer(m.pipe.model, m.pipe.task, m.pipe.data, m.cfg.trainer, m.logger, m.run_dir / "checkpoints",
                                _checkpointer(model, m, optimizer, scheduler), settings.describe(), progress=progress and m.index == 0)
        log.info("%s | ensemble of %d (seeds %d..%d) | %s params each | %s | %s%s | device %s", cfg.model.name, K, members[0].seed,
                 members[-1].seed, members[0].result["params"], cfg.data.name, settings.describe(),
                 "" if settings.is_fixed_step else " (members share step sizes)", device)
        fit = EnsembleFit(model, members, cfg.trainer, settings.describe())
        fit.fit(optimizer, scheduler)
        fit.sync()
        for m in members:
            test = evaluate(m.pipe.model, m.pipe.task, m.pipe.data.test, cfg.trainer.get("eval_batch_size"))
            m.result["metrics"] = {f"test/{k}": v for k, v in test.items()}
            m.logger.scalars(m.state.step, m.result["metrics"])
            m.result["status"] = "completed"
        if cfg.trainer.get("plots", True):
            from nodex.viz import diagnostics

            for m in members:
                diagnostics(m.pipe.model, m.pipe.data, m.pipe.task, m.logger, m.state.step)
        summary["status"] = "completed"
    except KeyboardInterrupt:
        summary["status"] = "interrupted"
        for m in members:
            m.result["status"] = "interrupted"
            m.result["error"] = f"interrupted at step {m.state.step} (ensemble {run_dir})"
        summary["error"] = f"interrupted at step {members[0].state.step if members else 0}; resume a member with trainer.resume={run_dir}/member-k"
        raise
    except Exception as exc:
        message = str(exc) if isinstance(exc, NodexError) else f"{type(exc).__name__}: {exc}"
        summary["error"] = message
        for m in members:
            m.result["error"] = message
        raise
    finally:
        _finish(cfg, members, summary, run_dir, started)
    log.info("done (mean of %d): %s", len(members), ", ".join(f"{k}={v:.4g}" for k, v in summary["metrics"].items()))
    return summary


def _checkpointer(model: EnsembleNeuralODE, m: Member, optimizer: torch.optim.Optimizer, scheduler: Any) -> Callable[[LoopState], dict[str, Any]]:
    """``make_checkpoint`` for member ``m``: the dict its own run would save."""

    def make_checkpoint(st: LoopState) -> dict[str, Any]:
        model.load_member(m.index, m.pipe.model)
        return {
            "model": m.pipe.model.state_dict(), "optimizer": member_optimizer_state(optimizer, m.index),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "step": st.step, "best": st.best, "config": m.resolved,
            "rng": {"torch": torch.get_rng_state(), "batches": st.batch_gen.get_state()},
        }

    return make_checkpoint


def _finish(cfg: DictConfig, members: list[Member], summary: dict[str, Any], run_dir: Path, started: float) -> None:
    """Write every member's ``result.json`` (and close its logger), then ``ensemble.json``."""
    wall = time.perf_counter() - started
    for m in members:
        m.result["steps"] = m.state.step
        m.result["wall_time_s"] = wall  # the ensemble's wall time: all members were trained in it
        totals = m.trainer.totals if m.trainer is not None else {"steps": 0}
        if totals["steps"]:
            m.result["nfe_forward"] = totals["nfe_forward"] / totals["steps"]
            m.result["nfe_backward"] = totals["nfe_backward"] / totals["steps"]
        _write_json(m.run_dir / "result.json", m.result)
        if m.logger is not None:
            if m.result["status"] == "completed":
                m.logger.hparams(_hparams(m.cfg), {**m.result["metrics"], "nfe_forward": m.result["nfe_forward"] or 0.0, "params": m.result["params"]})
            m.logger.close()
    done = [m.result["metrics"] for m in members if m.result["status"] == "completed"]
    keys = [k for k in (done[0] if done else {}) if all(k in d for d in done)]
    summary["metrics"] = {k: statistics.fmean(d[k] for d in done) for k in keys}
    summary["metrics_std"] = {k: statistics.pstdev([d[k] for d in done]) for k in keys}
    summary["member_metrics"] = [m.result["metrics"] for m in members]
    summary["steps"] = members[0].state.step if members else 0
    summary["wall_time_s"] = wall
    if members:
        summary["nfe_forward"], summary["nfe_backward"] = members[0].result["nfe_forward"], members[0].result["nfe_backward"]
    _write_json(run_dir / "ensemble.json", summary)
    if not members:  # failed before any member directory existed: record it where a run would
        result = _new_result(cfg, summary["config"])
        result.update(error=summary["error"], wall_time_s=wall)
        _write_json(run_dir / "result.json", result)
