"""The training loop: step -> solve -> loss -> backward -> optimizer, with NFE, timing,
validation, checkpoints and progress. It knows no model variant: it needs ``model(x)``
returning a :class:`~nodex.models.ModelOutput` and ``model.nfe`` (an NFE counter)."""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn

from nodex.data import DataBundle, Split, iterate_batches
from nodex.errors import DivergenceError, SolverError
from nodex.train.checkpoint import save_checkpoint
from nodex.train.logs import RunLogger
from nodex.train.tasks import Task

log = logging.getLogger("nodex")


@dataclass
class LoopState:
    """What survives a checkpoint: the step count, the best monitored value, RNG streams."""

    step: int = 0
    best: float | None = None
    batch_gen: torch.Generator = field(default_factory=torch.Generator)


@dataclass
class StepStats:
    """Running sums between two log points (host floats only at log time)."""

    steps: int = 0
    samples: int = 0
    nfe_forward: int = 0
    nfe_backward: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach()
            self.sums[k] = v if k not in self.sums else self.sums[k] + v


def evaluate(model: nn.Module, task: Task, split: Split, batch_size: int | None = None) -> dict[str, float]:
    """Loss, task metrics and mean forward NFE per batch on ``split`` (no gradients)."""
    model.eval()
    X, y = split
    n = X.shape[0]
    size = n if batch_size is None else batch_size
    totals: dict[str, float] = {}
    nfe = []
    with torch.no_grad():
        for start in range(0, n, size):
            xb, yb = X[start : start + size], y[start : start + size]
            model.nfe.reset()
            out = model(xb)
            nfe.append(model.nfe.count)
            loss, parts = task.loss(out, yb)
            values = {"loss": loss, **parts, **task.metrics(out, yb), **task.model_metrics(model, xb, yb)}
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + float(v) * xb.shape[0]
    model.train()
    result = {k: v / n for k, v in totals.items()}
    result["nfe_forward"] = sum(nfe) / len(nfe)
    return result


@contextmanager
def solver_failures(step: int, solver: str):
    """Name the step in a :class:`SolverError`, and turn the adjoint's bare backward-solve
    assertions (raised inside ``loss.backward()``) into one."""
    try:
        yield
    except SolverError as exc:
        raise SolverError(f"step {step}: {exc}") from None
    except AssertionError as exc:
        raise SolverError(f"step {step}: solver failed in the backward pass ({str(exc).split(':')[0]}) with {solver}: loosen solver.rtol/atol or lower trainer.optim.lr") from None


class Trainer:
    """Runs the optimisation described by the ``trainer`` config group.

    Args:
        model: the model; ``model.nfe`` is read and reset around every step.
        task: loss and metrics.
        data: splits on the training device (and an optional fresh-batch sampler).
        cfg: the ``trainer`` config.
        logger: where scalars go.
        checkpoint_dir: ``last.pt`` / ``best.pt`` are written here.
        make_checkpoint: returns the checkpoint dict for the current state.
        solver: short solver description for error messages.
        plot: optional ``plot(step)`` called every ``trainer.plot_every`` steps (at log points),
            e.g. the diagnostic figures; the final figures are the caller's business.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        data: DataBundle,
        cfg: DictConfig,
        logger: RunLogger,
        checkpoint_dir: Path,
        make_checkpoint: Callable[[LoopState], dict[str, Any]],
        solver: str,
        progress: bool = False,
        plot: Callable[[int], None] | None = None,
    ) -> None:
        self.model, self.task, self.data, self.cfg = model, task, data, cfg
        self.logger = logger
        self.checkpoint_dir = checkpoint_dir
        self.make_checkpoint = make_checkpoint
        self.solver = solver
        self.progress = progress
        self.plot = plot
        self.plot_every = int(cfg.get("plot_every") or 0)
        self.batch_size = cfg.get("batch_size")
        self.clip = float(cfg.grad_clip) if cfg.get("grad_clip") else None
        self.max_steps = self.total_steps(cfg, data)
        self.totals = {"steps": 0, "nfe_forward": 0, "nfe_backward": 0}

    @staticmethod
    def steps_per_epoch(cfg: DictConfig, data: DataBundle) -> int:
        """Optimisation steps in one pass over the training split (1 for full batch)."""
        n = data.train[0].shape[0]
        return 1 if not cfg.get("batch_size") or cfg.batch_size >= n else n // cfg.batch_size

    @classmethod
    def total_steps(cls, cfg: DictConfig, data: DataBundle) -> int:
        """``trainer.max_steps``, or ``trainer.epochs`` × batches per epoch when epochs is set."""
        if cfg.get("epochs"):
            return int(cfg.epochs) * cls.steps_per_epoch(cfg, data)
        return int(cfg.max_steps)

    def _batches(self, state: LoopState):
        while True:
            if self.data.sampler is not None:
                yield self.data.sampler(self.batch_size or self.data.train[0].shape[0])
            else:
                yield from iterate_batches(self.data.train, self.batch_size, state.batch_gen)

    def _checkpoint(self, state: LoopState, name: str) -> None:
        save_checkpoint(self.make_checkpoint(state), self.checkpoint_dir / f"{name}.pt")

    def fit(self, optimizer: torch.optim.Optimizer, scheduler: Any, state: LoopState) -> LoopState:
        """Train from ``state.step`` to the step budget.

        Raises:
            SolverError, DivergenceError: with the step, solver and tolerances in the message;
                ``last.pt`` then holds the last state that was checked finite.
            KeyboardInterrupt: after saving ``last.pt`` at the current (finite) state.
        """
        cfg = self.cfg
        log_every, val_every = max(1, int(cfg.log_every)), int(cfg.val_every or 0)
        ckpt_every = int(cfg.checkpoint_every or 0)
        scheduler_per_epoch = self.cfg.scheduler.get("unit", "step") == "epoch"
        steps_per_epoch = self.steps_per_epoch(cfg, self.data)
        stats = StepStats()
        bar = self._progress_bar(state.step)
        batches = self._batches(state)
        task = self.task
        graphed = None
        if cfg.get("cuda_graph"):  # checked by validate_cuda_graph: a capturable fixed-step run on a GPU
            from nodex.train.cuda_graph import GraphedStep

            graphed = GraphedStep(lambda Xb, yb: self.train_step(Xb, yb, optimizer, state.step + 1))
        try:
            while state.step < self.max_steps:
                X, y = next(batches)
                if graphed is not None:
                    loss, parts, out, nfe_f, nfe_b = graphed(X, y)
                else:
                    loss, parts, out, nfe_f, nfe_b = self.train_step(X, y, optimizer, state.step + 1)
                state.step += 1
                if scheduler is not None and (not scheduler_per_epoch or state.step % steps_per_epoch == 0):
                    scheduler.step()
                stats.steps += 1
                stats.samples += X.shape[0]
                stats.nfe_forward += nfe_f
                stats.nfe_backward += nfe_b
                self.totals["steps"] += 1
                self.totals["nfe_forward"] += nfe_f
                self.totals["nfe_backward"] += nfe_b
                stats.add({"loss": loss, **parts, **task.metrics(out, y)})
                for key, value in out.extras.items():
                    stats.add({f"{key}_mean": value.float().mean()})
                last = state.step == self.max_steps
                if state.step % log_every == 0 or last:
                    self._log_train(state, stats, optimizer, bar)
                    stats = StepStats()
                    if (val_every and state.step % val_every == 0) or last:
                        self._validate(state)
                    if ckpt_every and (state.step % ckpt_every == 0) or last:
                        self._checkpoint(state, "last")
                    if self.plot is not None and self.plot_every and state.step % self.plot_every == 0 and not last:
                        self.plot(state.step)
        except KeyboardInterrupt:
            self._check_finite_params(state)
            self._checkpoint(state, "last")
            raise
        finally:
            if bar is not None:
                bar.close()
        return state

    def train_step(self, X: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, step: int = 0):
        """One optimisation step on ``(X, y)``; returns ``(loss, parts, out, nfe_forward, nfe_backward)``.

        Raises:
            SolverError: the forward or the adjoint's backward solve failed (names ``step``).
        """
        model = self.model
        model.nfe.reset()
        with solver_failures(step, self.solver):
            out = model(X)
            nfe_f = model.nfe.count
            loss, parts = self.task.loss(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_(model.parameters(), self.clip)
        optimizer.step()
        return loss, parts, out, nfe_f, model.nfe.count - nfe_f

    def _check_finite_params(self, state: LoopState) -> None:
        for p in self.model.parameters():
            if not torch.isfinite(p).all():
                raise DivergenceError(f"parameters became non-finite by step {state.step} with {self.solver}: lower trainer.optim.lr or set trainer.grad_clip")

    def _log_train(self, state: LoopState, stats: StepStats, optimizer: torch.optim.Optimizer, bar: Any) -> dict[str, float]:
        values = {f"train/{k}": float(v) / stats.steps for k, v in stats.sums.items()}
        if not all(math.isfinite(v) for v in values.values()):
            bad = ", ".join(k for k, v in values.items() if not math.isfinite(v))
            raise DivergenceError(
                f"{bad} became non-finite by step {state.step} with {self.solver}: lower trainer.optim.lr, set trainer.grad_clip or tighten solver.rtol/atol"
            )
        self._check_finite_params(state)
        elapsed = time.perf_counter() - stats.started
        values.update(
            {
                "train/nfe_forward": stats.nfe_forward / stats.steps,
                "train/nfe_backward": stats.nfe_backward / stats.steps,
                "train/lr": optimizer.param_groups[0]["lr"],
                "time/step_ms": 1000.0 * elapsed / stats.steps,
                "time/samples_per_s": stats.samples / max(elapsed, 1e-9),
            }
        )
        self.logger.scalars(state.step, values)
        if bar is not None:
            bar.update(stats.steps)
            bar.set_postfix(loss=f"{values['train/loss']:.4g}", nfe=f"{values['train/nfe_forward']:.0f}", refresh=False)
        return values

    def _validate(self, state: LoopState) -> None:
        metrics = evaluate(self.model, self.task, self.data.val, self.cfg.get("eval_batch_size"))
        self.logger.scalars(state.step, {f"val/{k}": v for k, v in metrics.items()})
        value = metrics.get(self.task.monitor, metrics["loss"])
        better = state.best is None or (value > state.best if self.task.monitor_mode == "max" else value < state.best)
        if better and math.isfinite(value):
            state.best = value
            self._checkpoint(state, "best")

    def _progress_bar(self, start: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.max_steps, initial=start, desc="train", disable=None, leave=False, dynamic_ncols=True)
