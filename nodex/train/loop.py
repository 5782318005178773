"""The training loop: step -> solve -> loss -> backward -> optimizer, with NFE, timing,
validation, checkpoints and progress, for ``K >= 1`` members (:mod:`nodex.train.members`).
It knows no model variant: it needs ``model(x)`` returning a :class:`~nodex.models.ModelOutput`
and ``model.nfe`` (an NFE counter)."""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn

from nodex.data import DataBundle, Split, iterate_batches
from nodex.errors import NodexError, ResourceError, SolverError
from nodex.train.checkpoint import checkpoint_state, save_checkpoint, save_checkpoints
from nodex.train.divergence import check_logged, check_parameters
from nodex.train.members import LoopState, Member, Members
from nodex.train.preemption import StopRequest, raise_if_requested
from nodex.train.streams import model_generators, training_streams_kept
from nodex.train.tasks import Task

log = logging.getLogger("nodex")


@dataclass
class StepStats:
    """Running sums between two log points (host floats only at log time)."""

    steps: int = 0
    samples: int = 0
    nfe_forward: int = 0
    nfe_backward: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    first_loss: torch.Tensor | None = None  # the loss of the window's first step in this process (divergence)

    def add(self, values: dict[str, torch.Tensor]) -> None:
        if self.first_loss is None and "loss" in values:
            self.first_loss = values["loss"].detach()
        for k, v in values.items():
            v = v.detach()
            self.sums[k] = v if k not in self.sums else self.sums[k] + v

    def state_dict(self) -> dict[str, Any]:
        """The sums so far (a checkpoint between two log points keeps them: the resumed run's next row is the
        uninterrupted run's)."""
        return {"steps": self.steps, "samples": self.samples, "nfe_forward": self.nfe_forward,
                "nfe_backward": self.nfe_backward, "sums": dict(self.sums)}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "StepStats":
        stats = cls()
        if state:
            stats.steps, stats.samples = int(state["steps"]), int(state["samples"])
            stats.nfe_forward, stats.nfe_backward = int(state["nfe_forward"]), int(state["nfe_backward"])
            stats.sums = dict(state["sums"])
        return stats


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
        reason = str(exc).split(":")[0]
        raise SolverError(f"step {step}: solver failed in the backward pass ({reason}) with {solver}: "
                          "loosen solver.rtol/atol or lower trainer.optim.lr") from None


def backward(loss: torch.Tensor, nfe_forward: int, adjoint: bool = False) -> None:
    """``loss.backward()``; running out of memory there is the autograd graph of the forward solve (``nfe_forward``
    field evaluations kept; under the ``adjoint``, the backward solve's batch), and the one-line
    :class:`~nodex.errors.ResourceError` says how to shrink it.

    Raises:
        ResourceError: an allocation failed in the backward pass.
    """
    from nodex.train.setup import out_of_memory

    try:
        loss.backward()
    except (RuntimeError, MemoryError) as exc:
        oom = out_of_memory(exc)
        if oom is None:
            raise
        size = str(oom).partition(":")[0].removeprefix("out of memory")
        if adjoint:
            raise ResourceError(f"out of memory in the adjoint's backward solve{size}: lower trainer.batch_size or "
                                "trainer.ensemble") from None
        raise ResourceError(f"out of memory in the backward pass{size}: autograd kept the graph of {nfe_forward} field "
                            "evaluations; use solver.sensitivity=adjoint (memory flat in the steps), lower "
                            "trainer.batch_size, or loosen solver.rtol/atol") from None


class Trainer:
    """Runs the optimisation described by the ``trainer`` config group for ``K >= 1`` members.

    Args:
        members: what is trained (:class:`Members` for one model, ``StackedMembers`` for a seed
            ensemble) and, per member, its task, data, logger, run directory (``checkpoints/``
            ``last.pt`` / ``best.pt``) and optional ``plot(step)``, called every
            ``trainer.plot_every`` steps at log points (the final figures are the caller's).
        cfg: the ``trainer`` config.
        solver: short solver description for error messages.
        progress: show a progress bar.

    An error raised for one member of an ensemble names it: ``member k (seed s): ...``.
    """

    def __init__(self, members: Members, cfg: DictConfig, solver: str, progress: bool = False) -> None:
        self.members, self.model, self.cfg = members, members.model, cfg
        self.solver = solver
        self.progress = progress
        self.plot_every = int(cfg.get("plot_every") or 0)
        self.batch_size = cfg.get("batch_size")
        self.clip = float(cfg.grad_clip) if cfg.get("grad_clip") else None
        self.max_steps = self.total_steps(cfg, members.members[0].data)
        zero = {"steps": 0, "nfe_forward": 0, "nfe_backward": 0}
        self.totals = dict(members.members[0].state.totals or zero)  # the batched solve's (a resumed run's so far)
        # each member's own (the run's where members take the batched solve's steps): finish_member's totals
        self.member_totals = [dict(m.state.member_totals or m.state.totals or zero) for m in members.members]
        self.member_nfe: tuple[list[int], list[int]] | None = None  # the last step's per-member (forward, backward)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.stats: list[StepStats] = [StepStats.from_state(m.state.window) for m in members.members]
        self.stop: StopRequest | None = None
        self.committed = False  # this step's update has begun: a KeyboardInterrupt must not rewind its batch

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

    @property
    def step(self) -> int:
        return self.members.members[0].state.step

    def _batches(self, m: Member):
        """Training batches: fresh ones from the sampler, or epochs of shuffled mini-batches whose position is
        kept in ``m.state`` (a resumed run continues inside the epoch it stopped in)."""
        while m.data.sampler is not None:
            yield m.data.sampler(self.batch_size or m.data.train[0].shape[0])
        while True:
            if m.state.epoch_start is None:
                m.state.epoch_start = m.state.batch_gen.get_state()
            else:
                m.state.batch_gen.set_state(m.state.epoch_start)
            skip = m.state.epoch_pos
            for i, batch in enumerate(iterate_batches(m.data.train, self.batch_size, m.state.batch_gen)):
                if i >= skip:
                    m.state.epoch_pos = i + 1
                    yield batch
            m.state.epoch_start, m.state.epoch_pos = None, 0

    def _each(self, fn: Callable[[Member], Any]) -> None:
        """``fn(member)`` for every member; in an ensemble an error names the member it came from."""
        for m in self.members.members:
            try:
                fn(m)
            except NodexError as exc:
                if self.members.size == 1:
                    raise
                raise type(exc)(f"member {m.index} (seed {m.seed}): {exc}") from None

    def _state(self, m: Member) -> dict[str, Any]:
        opt_state = self.members.optimizer_state(self.optimizer, m.index)
        progress = {"window": self.stats[m.index].state_dict(), "totals": dict(self.totals),
                    "member_totals": dict(self.member_totals[m.index])}
        return checkpoint_state(m.model, opt_state, self.scheduler, m.state, m.config, m.data_spec, m.data.sampler,
                                progress)

    def _stream_marks(self) -> tuple[torch.Tensor, list[tuple[Any, ...]]]:
        """Where every batch stream, every generator a model owns (STEER's end depths) and the global RNG stand
        before a step draws from them."""
        marks = [(m.state.batch_gen.get_state(), m.state.epoch_start, m.state.epoch_pos,
                  m.data.sampler.get_state() if m.data.sampler is not None else None,
                  [g.get_state() for g in owned]) for m, owned in zip(self.members.members, self.generators)]
        return torch.get_rng_state(), marks

    def _rewind(self, marks: tuple[torch.Tensor, list[tuple[Any, ...]]]) -> None:
        """Put the streams back where :meth:`_stream_marks` saw them: a step stopped before its update took nothing."""
        rng, per_member = marks
        torch.set_rng_state(rng)
        for m, generators, (gen, epoch_start, epoch_pos, fresh, owned) in zip(self.members.members, self.generators,
                                                                              per_member):
            m.state.batch_gen.set_state(gen)
            m.state.epoch_start, m.state.epoch_pos = epoch_start, epoch_pos
            if fresh is not None:
                m.data.sampler.set_state(fresh)
            for g, state in zip(generators, owned):
                g.set_state(state)

    def _commit(self) -> None:
        """From here to the step boundary a SIGINT waits (the update is applied whole, or not at all)."""
        if self.stop is not None:
            self.stop.abortable = False
        self.committed = True

    def _reopen(self) -> None:
        self.committed = False
        if self.stop is not None:
            self.stop.abortable = True

    def _checkpoint(self, m: Member, name: str) -> None:
        if m.run_dir is not None:
            save_checkpoint(self._state(m), m.run_dir / "checkpoints" / f"{name}.pt")

    def _checkpoint_last(self) -> None:
        """Every member's ``last.pt`` at this step, written as one (an ensemble resumes only from one step)."""
        saved = [m for m in self.members.members if m.run_dir is not None]
        save_checkpoints([(self._state(m), m.run_dir / "checkpoints" / "last.pt") for m in saved])

    def fit(self, optimizer: torch.optim.Optimizer, scheduler: Any, stop: StopRequest | None = None) -> None:
        """Train every member from its ``state.step`` to the step budget.

        Raises:
            SolverError, DivergenceError: with the step, solver and tolerances in the message;
                ``last.pt`` then holds the last state that was checked finite.
            KeyboardInterrupt: after saving ``last.pt`` at the state the next step starts from (a step stopped
                before its update is rewound: its batch is drawn again on resume).
            Preempted: ``stop`` recorded a signal; ``last.pt`` holds the state after the last whole step.
        """
        self.optimizer, self.scheduler, self.stop = optimizer, scheduler, stop
        self.log_every, self.val_every = max(1, int(self.cfg.log_every)), int(self.cfg.val_every or 0)
        self.ckpt_every = int(self.cfg.checkpoint_every or 0)
        self.scheduler_per_epoch = self.cfg.scheduler.get("unit", "step") == "epoch"
        self.epoch_steps = self.steps_per_epoch(self.cfg, self.members.members[0].data)
        bar = self._progress_bar(self.step)
        self.generators = [model_generators(m.model) for m in self.members.members]  # found once, marked every step
        batches = [self._batches(m) for m in self.members.members]
        step = self._step_function(optimizer)
        try:
            while self.step < self.max_steps:
                marks = self._stream_marks()
                self._reopen()
                raise_if_requested(stop, self.step, self._save_last)
                try:
                    X, y = self.members.batch([next(b) for b in batches])
                    if self.cfg.get("cuda_graph"):
                        self._commit()  # a graphed step updates inside one replay
                    result = step(X, y)
                except KeyboardInterrupt:
                    if not self.committed:
                        self._rewind(marks)
                    raise
                self._commit()
                self._advance()
                self._record(self.stats, X, y, result)
                if self.step % self.log_every == 0 or self.step == self.max_steps:
                    self._log_point(bar)
                raise_if_requested(stop, self.step, self._save_last)
        except KeyboardInterrupt:
            self._commit()  # a second Ctrl-C waits for the save
            self._save_last()
            raise
        finally:
            self._reopen()
            self.stop = None
            if bar is not None:
                bar.close()

    def _save_last(self) -> None:
        """``last.pt`` of every member at the current step (its parameters checked finite first)."""
        self.members.sync()
        self._each(self._check_finite_params)
        self._checkpoint_last()

    def _step_function(self, optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        def plain(X: torch.Tensor, y: torch.Tensor):
            return self.train_step(X, y, optimizer, self.step + 1)

        if not self.cfg.get("cuda_graph"):
            return plain
        from nodex.train.cuda_graph import GraphedStep  # checked by validate_cuda_graph: fixed steps on a GPU

        return GraphedStep(plain)

    def _advance(self) -> None:
        for m in self.members.members:
            m.state.step += 1
        if self.scheduler is not None and (not self.scheduler_per_epoch or self.step % self.epoch_steps == 0):
            self.scheduler.step()

    def _record(self, stats: list[StepStats], X: torch.Tensor, y: torch.Tensor, result: Any) -> None:
        """Add one step's results to every member's running sums (and the run's NFE totals)."""
        loss, parts, out, nfe_f, nfe_b = result
        self.totals["steps"] += 1
        self.totals["nfe_forward"] += nfe_f
        self.totals["nfe_backward"] += nfe_b
        samples = self.members.samples(X)
        for m, st in zip(self.members.members, stats):
            loss_k, parts_k, out_k, y_k = self.members.view(m.index, loss, parts, out, y)
            f_k, b_k = (nfe_f, nfe_b) if self.member_nfe is None else (nfe[m.index] for nfe in self.member_nfe)
            for key, value in (("steps", 1), ("nfe_forward", f_k), ("nfe_backward", b_k)):
                self.member_totals[m.index][key] += value
            st.steps += 1
            st.samples += samples
            st.nfe_forward += f_k
            st.nfe_backward += b_k
            st.add({"loss": loss_k, **parts_k, **m.task.metrics(out_k, y_k)})
            for key, value in out_k.extras.items():
                st.add({f"{key}_mean": value.float().mean()})

    def _log_point(self, bar: Any) -> None:
        """Log (starting the next window of running sums), validate, checkpoint and plot every member (its plain
        model synced first)."""
        step, last, stats = self.step, self.step == self.max_steps, self.stats
        self.members.sync()
        self._each(lambda m: self._log_train(m, stats[m.index], bar if m.index == 0 else None))
        self.stats = [StepStats() for _ in self.members.members]
        if (self.val_every and step % self.val_every == 0) or last:
            self._each(self._validate)
        if self.ckpt_every and (step % self.ckpt_every == 0) or last:
            self._checkpoint_last()
        if self.plot_every and step % self.plot_every == 0 and not last:
            for m in self.members.members:
                if m.plot is not None:
                    with training_streams_kept():
                        m.plot(step)

    def train_step(self, X: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer, step: int = 0):
        """One optimisation step of all members on ``(X, y)`` (``(B, ...)``, or ``(K, B, ...)`` for
        ``K > 1``); returns ``(loss, parts, out, nfe_forward, nfe_backward)``: loss and parts
        scalars (``(K,)`` for ``K > 1``), ``out`` the model's output, the NFE the model's (batched) solve's;
        each member's own, where members take their own steps, in ``member_nfe``.

        Raises:
            SolverError: the forward or the adjoint's backward solve failed (names ``step``).
        """
        model = self.model
        model.nfe.reset()
        with solver_failures(step, self.solver):
            out = model(X)
            nfe_f = model.nfe.count
            members_f = list(model.nfe.members) if getattr(model.nfe, "members", None) else None
            loss, parts, total = self.members.loss(out, y)
            optimizer.zero_grad(set_to_none=True)
            backward(total, nfe_f, getattr(getattr(model, "settings", None), "sensitivity", None) == "adjoint")
        self._commit()
        if self.clip:
            self.members.clip(self.clip)
        optimizer.step()
        self.member_nfe = None if not members_f else (
            members_f, [b - f for b, f in zip(model.nfe.members, members_f)])
        return loss, parts, out, nfe_f, model.nfe.count - nfe_f

    def _check_finite_params(self, m: Member) -> None:
        check_parameters(m, self.solver)

    def _log_train(self, m: Member, stats: StepStats, bar: Any) -> dict[str, float]:
        values = {f"train/{k}": float(v) / stats.steps for k, v in stats.sums.items()}
        first = None if stats.first_loss is None else float(stats.first_loss)
        check_logged(m, values, first, self.solver)  # non-finite or blown-up loss, non-finite parameters
        elapsed = time.perf_counter() - stats.started
        values.update(
            {
                "train/nfe_forward": stats.nfe_forward / stats.steps,
                "train/nfe_backward": stats.nfe_backward / stats.steps,
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "time/step_ms": 1000.0 * elapsed / stats.steps,
                "time/samples_per_s": stats.samples / max(elapsed, 1e-9),
            }
        )
        m.logger.scalars(m.state.step, values)
        if not self.progress and m.index == 0:  # no bar (a sweep, Slurm, nohup): a progress line in train.log
            log.info("step %d/%d | loss %.4g | nfe %.0f/%.0f | %.1f ms/step", m.state.step, self.max_steps,
                     values["train/loss"], values["train/nfe_forward"], values["train/nfe_backward"],
                     values["time/step_ms"])
        if bar is not None:
            bar.update(stats.steps)
            bar.set_postfix(loss=f"{values['train/loss']:.4g}", nfe=f"{values['train/nfe_forward']:.0f}", refresh=False)
        return values

    def _validate(self, m: Member) -> None:
        if m.data.val is None:  # a user's dataset without a validation split: nothing to validate or keep as best
            return
        with training_streams_kept():
            metrics = evaluate(m.model, m.task, m.data.val, self.cfg.get("eval_batch_size"))
        m.logger.scalars(m.state.step, {f"val/{k}": v for k, v in metrics.items()})
        if m.index == 0:
            log.info("step %d validation | %s", m.state.step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        value = metrics.get(m.task.monitor, metrics["loss"])
        best = m.state.best
        better = best is None or (value > best if m.task.monitor_mode == "max" else value < best)
        if better and math.isfinite(value):
            m.state.best = value
            self._checkpoint(m, "best")

    def _progress_bar(self, start: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.max_steps, initial=start, desc="train", disable=None, leave=False, dynamic_ncols=True)
