"""What the one :class:`~nodex.train.loop.Trainer` trains: ``K >= 1`` members.

A plain run is one member whose model trains itself (:class:`Members`). A seed ensemble
(``trainer.ensemble=K``) is :class:`StackedMembers`: the members' parameters are stacked into
one :class:`~nodex.models.ensemble.EnsembleNeuralODE` (one solve of the ``(K, B, ...)`` state).
The loss is the sum of the members' losses, so each member's gradient, and its Adam/SGD update
(elementwise), is the one its own run computes; ``trainer.grad_clip`` clips each member by its
own norm. With fixed-step solvers each member reproduces its separate run; with nodex's dopri5 and
tsit5 each member takes its own steps (and reports its own NFE), its separate run's to solver
tolerance; torchdiffeq's adaptive solvers share one step-size sequence (the error norm over the
stacked state).

Each :class:`Member` keeps its own plain model (synced from the stack at log points), task, data
splits, batch stream, best value, logger and run directory, so validation, checkpoints and
``result.json`` are the same code for every ``K``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nodex.runs import EARLIER_LAUNCH_DIRS, override_key
from nodex.data import DataBundle
from nodex.errors import ConfigError
from nodex.models import ModelOutput
from nodex.models.ensemble import EnsembleNeuralODE, member_output
from nodex.train.logs import RunLogger
from nodex.train.tasks import Task


@dataclass
class LoopState:
    """What survives a checkpoint: the step count, the best monitored value, RNG streams."""

    step: int = 0
    best: float | None = None
    batch_gen: torch.Generator = field(default_factory=torch.Generator)
    # the shuffle generator's state when the current epoch began, and how many of its batches were taken:
    # a run resumed mid-epoch redraws that epoch's order and skips what it already trained on
    epoch_start: torch.Tensor | None = None
    epoch_pos: int = 0
    # a resumed run's loop sums since the last log point and the run's NFE totals (checkpoint "progress")
    window: dict[str, Any] | None = None
    totals: dict[str, int] | None = None
    member_totals: dict[str, int] | None = None  # this member's own NFE totals (per-member steps)


@dataclass
class Member:
    """One member: its plain model, task and data, its loop state, and where its run is written.

    ``cfg``/``config``: the config (and its resolved dict) of the separate run it is;
    ``run_dir``: ``None`` for a trainer that only steps (benchmarks); ``result``: its ``result.json``.
    """

    index: int
    model: nn.Module
    task: Task
    data: DataBundle
    cfg: DictConfig | None = None
    config: dict[str, Any] | None = None
    run_dir: Path | None = None
    data_spec: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    state: LoopState = field(default_factory=LoopState)
    logger: RunLogger | None = None
    plot: Callable[[int], None] | None = None
    first_loss: float | None = None  # the loss of the first step trained in this process (nodex.train.divergence)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed) if self.cfg is not None else self.index


Views = tuple[torch.Tensor, dict[str, torch.Tensor], ModelOutput, torch.Tensor]


class Members:
    """``K = 1``: the member's own model is the trained model; every hook is the identity."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.model: nn.Module = members[0].model

    @classmethod
    def single(cls, model: nn.Module, task: Task, data: DataBundle) -> "Members":
        """One member with no run directory (a trainer that only steps, e.g. a benchmark)."""
        return cls([Member(0, model, task, data)])

    @property
    def size(self) -> int:
        return len(self.members)

    def batch(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' batches as the trained model's input: ``(B, ...)`` here."""
        return pairs[0]

    def loss(self, out: ModelOutput, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """``(loss, parts, total)``: the task's loss and parts, and the scalar to back-propagate."""
        loss, parts = self.members[0].task.loss(out, y)
        return loss, parts, loss

    def samples(self, X: torch.Tensor) -> int:
        """Samples per member in the model input ``X``."""
        return X.shape[0]

    def view(self, k: int, loss: torch.Tensor, parts: dict[str, torch.Tensor], out: ModelOutput,
             y: torch.Tensor) -> Views:
        """Member ``k``'s ``(loss, parts, out, y)`` from one step's results."""
        return loss, parts, out, y

    def clip(self, max_norm: float) -> None:
        nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)

    def sync(self) -> None:
        """Bring the members' plain models up to the trained parameters (nothing to do here)."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
        """The state dict member ``k``'s own optimizer would have."""
        return optimizer.state_dict()

    def optimizer_from_members(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """The trained optimizer's state dict from each member's own (the inverse of :meth:`optimizer_state`)."""
        return states[0]


class StackedMembers(Members):
    """``K > 1`` members trained as one :class:`EnsembleNeuralODE`; inputs ``(K, B, ...)``."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.model: EnsembleNeuralODE = EnsembleNeuralODE([m.model for m in members])

    def batch(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def loss(self, out: ModelOutput, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Losses and parts stacked to ``(K,)``; the total is their sum (per-member gradients)."""
        each = [m.task.loss(member_output(out, m.index), y[m.index]) for m in self.members]
        losses = torch.stack([loss for loss, _ in each])
        parts = {key: torch.stack([p[key] for _, p in each]) for key in each[0][1]}
        return losses, parts, losses.sum()

    def samples(self, X: torch.Tensor) -> int:
        return X.shape[1]

    def view(self, k: int, loss: torch.Tensor, parts: dict[str, torch.Tensor], out: ModelOutput,
             y: torch.Tensor) -> Views:
        return loss[k], {key: v[k] for key, v in parts.items()}, member_output(out, k), y[k]

    def clip(self, max_norm: float) -> None:
        clip_members(list(self.model.parameters()), max_norm)

    def sync(self) -> None:
        for m in self.members:
            self.model.load_member(m.index, m.model)

    def optimizer_state(self, optimizer: torch.optim.Optimizer, k: int) -> dict[str, Any]:
        return member_optimizer_state(optimizer, k)

    def optimizer_from_members(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        return stacked_optimizer_state(states)


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


# Optimizer state entries every member shares (a step counter), not sliced per member.
SHARED_STATE_KEYS = ("step",)


def stacked_optimizer_state(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The stacked optimizer's state dict from the ``K`` members' own (what :func:`member_optimizer_state` sliced):
    per-parameter tensors stacked along a new leading ``K`` dimension, shared entries (:data:`SHARED_STATE_KEYS`,
    plain values) and the param groups taken from member 0."""
    state = {}
    for i, entries in states[0]["state"].items():
        state[i] = {key: (torch.stack([s["state"][i][key] for s in states])
                          if torch.is_tensor(v) and key not in SHARED_STATE_KEYS else v)
                    for key, v in entries.items()}
    return {"state": state, "param_groups": states[0]["param_groups"]}


def clip_members(params: list[torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` applied to each member (slice ``k`` of every stacked ``(K, ...)`` gradient) alone."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    K = grads[0].shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(K, -1), dim=1) for g in grads])
    coef = torch.clamp(max_norm / (torch.linalg.vector_norm(norms, dim=0) + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.reshape(K, *([1] * (g.dim() - 1))).to(g.dtype))


def ensemble_size(cfg: DictConfig) -> int:
    """``trainer.ensemble`` validated.

    Raises:
        ConfigError: not a positive integer, or a model kind that cannot be stacked.
    """
    value = cfg.trainer.get("ensemble", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"trainer.ensemble={value!r} must be a positive integer "
                          "(1: one run; K > 1: seeds seed..seed+K-1 in one batched solve)")
    kind = cfg.get("model", {}).get("kind", "neural_ode")
    if value > 1 and kind != "neural_ode":
        raise ConfigError(f"trainer.ensemble={value} needs model.kind=neural_ode (got {kind}); "
                          "run the seeds separately: nodex train --multirun seed=0,1,2")
    return value


def member_config(resolved: dict[str, Any], k: int) -> DictConfig:
    """The config of the separate run that member ``k`` reproduces: ``seed + k``, ``ensemble=1``."""
    cfg = OmegaConf.create(resolved)
    cfg.seed = int(resolved["seed"]) + k
    cfg.trainer.ensemble = 1
    return cfg


def hydra_snapshot(run_dir: Path, mdir: Path, mcfg: DictConfig) -> None:
    """``member-k/.hydra``: the member's config, the parent's ``hydra.yaml`` and its overrides
    with ``trainer.ensemble`` dropped and ``seed=SEED+k`` (what ``--multirun seed=...`` records)."""
    dest = mdir / ".hydra"
    dest.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(mcfg, dest / "config.yaml")
    src = run_dir / ".hydra"
    for name in ("hydra.yaml", EARLIER_LAUNCH_DIRS):  # where the run was started from: where its modules live
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    overrides = list(OmegaConf.load(src / "overrides.yaml")) if (src / "overrides.yaml").is_file() else []
    kept = [str(o) for o in overrides if override_key(o) not in ("seed", "trainer.ensemble")]
    OmegaConf.save(OmegaConf.create([*kept, f"seed={int(mcfg.seed)}"]), dest / "overrides.yaml")
