"""The tracking task (``task.kind=tracking``, paper E4): follow a reference γ(s) over depth.

Training uses the model's integral loss (``model.integral_loss.kind=tracking``: ``∫_0^S
mean((z - γ)²) ds``); the terminal term (``terminal_weight``, default 0: a pure integral loss)
is ``mean((ŷ - γ(S))²)`` with ``S = task.S`` (the presets set ``${model.horizon.S}``). At evaluation
the task re-integrates the model on ``[0, eval_horizon]`` (``points_per_unit`` depths per unit
of s) and reports

- ``tracking_mse``: mean over s ∈ [0, S], samples and tracked coordinates of (z(s) - γ(s))²;
- ``extrapolation_mse``: the same over s ∈ (S, eval_horizon] (beyond the training depth).

Options: ``reference`` (γ, see :func:`~nodex.models.integral.build_reference`; use the same as
the model's integral loss), ``coords`` (tracked state indices, default the first ``d``).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from nodex.data import DataBundle
from nodex.errors import ConfigError
from nodex.models.integral import build_reference, tracked_coords
from nodex.train.tasks.base import TASKS, Task


@TASKS.register("tracking")
class Tracking(Task):
    """Score trajectories against γ(s) on ``[0, S]`` and beyond (see the module docstring)."""

    monitor = "tracking_mse"
    monitor_mode = "min"

    def __init__(self, cfg: DictConfig, data: DataBundle) -> None:
        super().__init__(cfg, data)
        self.terminal_weight = float(cfg.get("terminal_weight", 0.0))
        if len(data.input_shape) != 1:
            raise ConfigError(f"task.kind=tracking needs flat inputs (initial states), got shape {data.input_shape}")
        self.n_outputs = int(data.input_shape[0])
        self.reference = build_reference(cfg.get("reference"), key="task.reference")
        self.coords = tracked_coords(cfg.get("coords"), self.reference.dim, data.input_shape, "task")
        self.S = float(cfg.get("S", 1.0))
        self.eval_horizon = float(cfg.get("eval_horizon", 5.0))
        self.points_per_unit = int(cfg.get("points_per_unit", 100))
        if self.points_per_unit < 1:
            raise ConfigError(f"task.points_per_unit={self.points_per_unit} must be a positive integer")

    def terminal_loss(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = self.reference.to(y_hat)(torch.tensor(self.S))
        return F.mse_loss(y_hat[:, self.coords], target.expand(y_hat.shape[0], -1))

    def model_metrics(self, model, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        S = float(model.S)
        if self.eval_horizon <= S:
            raise ConfigError(
                f"task.eval_horizon={self.eval_horizon} must exceed the training horizon model.horizon.S={S}"
            )
        n = int(round(self.eval_horizon * self.points_per_unit)) + 1
        s = torch.linspace(0.0, self.eval_horizon, n, dtype=x.dtype, device=x.device)
        traj = model.trajectory(x, s)  # (T, B, *state)
        z = traj.reshape(n, x.shape[0], -1)[:, :, self.coords]
        gamma = self.reference.to(x)(s)[:, None, :]  # (T, 1, d)
        err = (z - gamma).pow(2).mean(dim=(1, 2))  # (T,)
        inside = s <= S + 1e-9
        return {"tracking_mse": err[inside].mean(), "extrapolation_mse": err[~inside].mean()}
