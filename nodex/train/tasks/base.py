"""The task base class and registry: how a model's output is scored (the ``task`` config group).

A task turns a :class:`~nodex.models.ModelOutput` and targets into the training loss and
metrics. Tasks are registered in :data:`TASKS` under ``task.kind`` with the signature
``Task(cfg, data)``. Metrics are returned as 0-d tensors (no host sync); callers convert.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from nodex.data import DataBundle
from nodex.errors import ConfigError
from nodex.models import ModelOutput
from nodex.registry import Registry

TASKS: Registry[type["Task"]] = Registry("task.kind")


class Task:
    """Base task: ``loss = terminal_weight · L(ŷ, y) + ∫ l ds + Σ_k λ_k ∫ r_k ds`` (integral term when the model
    has one; regularisers ``r_k`` from ``task.regularizer``, built into the model, in training mode).

    Attributes:
        n_outputs: readout width the model must produce.
        monitor: metric name that selects the best checkpoint; ``monitor_mode``: ``max``/``min``.
    """

    n_outputs: int
    monitor: str = "loss"
    monitor_mode: str = "min"

    def __init__(self, cfg: DictConfig, data: DataBundle) -> None:
        self.cfg = cfg
        self.terminal_weight = float(cfg.get("terminal_weight", 1.0))

    def terminal_loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, out: ModelOutput, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss (0-d) and its parts ``loss_terminal`` / ``loss_integral`` / ``reg_kinetic`` / ``reg_jacobian``."""
        parts = {}
        total = None
        if self.terminal_weight != 0.0:
            parts["loss_terminal"] = self.terminal_loss(out.y_hat, y)
            total = self.terminal_weight * parts["loss_terminal"]
        if out.loss_integral is not None:
            parts["loss_integral"] = out.loss_integral
            total = out.loss_integral if total is None else total + out.loss_integral
        if out.loss_regularizer is not None:  # task.regularizer: Σ λ_k ∫ r_k ds; its terms logged unweighted
            parts.update(out.regularization)
            total = out.loss_regularizer if total is None else total + out.loss_regularizer
        if total is None:
            raise ConfigError(
                "task.terminal_weight=0 and the model has no integral loss: nothing to train; "
                "set model.integral_loss or task.terminal_weight"
            )
        return total, parts

    def metrics(self, out: ModelOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def model_metrics(self, model, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation-only metrics that need the model itself (e.g. re-integrating past the
        training horizon); called by ``evaluate`` under ``no_grad``. Default: none."""
        return {}
