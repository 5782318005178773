"""Supervised tasks: classification (cross-entropy or the paper's MSE readout) and regression."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from nodex.data import DataBundle
from nodex.errors import ConfigError
from nodex.models import ModelOutput
from nodex.train.tasks.base import TASKS, Task


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
            raise ConfigError(
                "task.kind=classification needs class labels, but this dataset has real-valued targets: "
                "use task=regression (or give integer labels 0..K-1)"
            )
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
            raise ConfigError(
                "task.kind=regression needs real-valued targets; this dataset has class labels: use task=classification"
            )
        self.n_outputs = data.target_dim

    def terminal_loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(y_hat, y.reshape(y_hat.shape))

    def metrics(self, out: ModelOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mse": F.mse_loss(out.y_hat, y.reshape(out.y_hat.shape))}
