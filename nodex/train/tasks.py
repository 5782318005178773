"""Tasks: how a model's output is scored (the ``task`` config group).

A task turns a :class:`~nodex.models.ModelOutput` and targets into the training loss and
metrics. Tasks are registered in :data:`TASKS` under ``task.kind`` with the signature
``Task(cfg, data)``. Metrics are returned as 0-d tensors (no host sync); callers convert.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from nodex.data import DataBundle
from nodex.errors import ConfigError
from nodex.models import ModelOutput
from nodex.registry import Registry

TASKS: Registry[type["Task"]] = Registry("task.kind")


class Task:
    """Base task: ``loss = terminal_weight · L(ŷ, y) + ∫ l ds`` (integral term when the model has one).

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
        """Total loss (0-d) and its parts ``loss_terminal`` / ``loss_integral``."""
        parts = {}
        total = None
        if self.terminal_weight != 0.0:
            parts["loss_terminal"] = self.terminal_loss(out.y_hat, y)
            total = self.terminal_weight * parts["loss_terminal"]
        if out.loss_integral is not None:
            parts["loss_integral"] = out.loss_integral
            total = out.loss_integral if total is None else total + out.loss_integral
        if total is None:
            raise ConfigError("task.terminal_weight=0 and the model has no integral loss: nothing to train; set model.integral_loss or task.terminal_weight")
        return total, parts

    def metrics(self, out: ModelOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def model_metrics(self, model, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Evaluation-only metrics that need the model itself (e.g. re-integrating past the
        training horizon); called by ``evaluate`` under ``no_grad``. Default: none."""
        return {}


@TASKS.register("classification")
class Classification(Task):
    """Class labels ``y`` ``(B,)``. ``loss=cross_entropy`` on ``n_classes`` logits, or
    ``loss=mse`` on one-hot targets; with ``mse`` and two classes the readout is the paper's
    single scalar regressed onto the 0/1 label and thresholded at 0.5 (annuli, §E1)."""

    monitor = "accuracy"
    monitor_mode = "max"
    LOSSES = ("cross_entropy", "mse")

    def __init__(self, cfg: DictConfig, data: DataBundle) -> None:
        super().__init__(cfg, data)
        if data.n_classes is None:
            raise ConfigError("task.kind=classification needs class labels, but this dataset has real-valued targets: use task=regression")
        self.kind = cfg.get("loss", "cross_entropy")
        if self.kind not in self.LOSSES:
            raise ConfigError(f"task.loss={self.kind!r} is unknown; choose one of: {', '.join(self.LOSSES)}")
        self.n_classes = data.n_classes
        self.scalar = self.kind == "mse" and self.n_classes == 2
        self.n_outputs = 1 if self.scalar else self.n_classes

    def terminal_loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "cross_entropy":
            return F.cross_entropy(y_hat, y)
        if self.scalar:
            return F.mse_loss(y_hat[:, 0], y.to(y_hat.dtype))
        return F.mse_loss(y_hat, F.one_hot(y, self.n_classes).to(y_hat.dtype))

    def predict(self, y_hat: torch.Tensor) -> torch.Tensor:
        return (y_hat[:, 0] > 0.5).long() if self.scalar else y_hat.argmax(dim=1)

    def metrics(self, out: ModelOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"accuracy": (self.predict(out.y_hat) == y).float().mean()}


@TASKS.register("regression")
class Regression(Task):
    """Real targets ``y`` ``(B, k)``; mean squared error."""

    def __init__(self, cfg: DictConfig, data: DataBundle) -> None:
        super().__init__(cfg, data)
        if data.target_dim is None:
            raise ConfigError("task.kind=regression needs real-valued targets; this dataset has class labels: use task=classification")
        self.n_outputs = data.target_dim

    def terminal_loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(y_hat, y.reshape(y_hat.shape))

    def metrics(self, out: ModelOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mse": F.mse_loss(out.y_hat, y.reshape(out.y_hat.shape))}


def build_task(cfg: DictConfig, data: DataBundle) -> Task:
    return TASKS.get(cfg.kind)(cfg, data)


from nodex.train import density  # noqa: E402,F401  (registers task.kind=density)
from nodex.train import tracking  # noqa: E402,F401  (registers task.kind=tracking)
