"""The density task (``task.kind=density``): maximum likelihood for normalizing flows.

The model's ``y_hat`` is the per-sample log-likelihood ``log p(x)`` ``(B, 1)`` (as
:class:`~nodex.models.cnf.CNF` returns); targets are ignored by the loss (they may carry a
condition index). Loss: the mean negative log-likelihood. Metrics: ``nll`` (nats per sample)
and ``bits_per_dim`` = nll / (d·ln 2) with ``d`` the latent width (``z_S``), the data dims.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from nodex.data import DataBundle
from nodex.models import ModelOutput
from nodex.train.tasks.base import TASKS, Task


@TASKS.register("density")
class Density(Task):
    """Negative log-likelihood of ``y_hat = log p(x)``; use with ``model=cnf``."""

    monitor = "nll"
    monitor_mode = "min"

    def __init__(self, cfg: DictConfig, data: DataBundle) -> None:
        super().__init__(cfg, data)
        self.n_outputs = 1

    def terminal_loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -y_hat.mean()

    def metrics(self, out: ModelOutput, y: torch.Tensor) -> dict[str, torch.Tensor]:
        nll = -out.y_hat.mean()
        dims = out.z_S[0].numel()
        return {"nll": nll, "bits_per_dim": nll / (dims * math.log(2.0))}
