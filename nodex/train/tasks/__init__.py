"""Tasks: how a model's output is scored (the ``task`` config group).

A task turns a :class:`~nodex.models.ModelOutput` and targets into the training loss and
metrics; each kind is registered in :data:`TASKS` (``task.kind``) by its own module.
"""

from __future__ import annotations

from omegaconf import DictConfig

from nodex.data import DataBundle
from nodex.train.tasks import density, supervised, tracking  # noqa: F401  (register task kinds)
from nodex.train.tasks.base import TASKS, Task


def build_task(cfg: DictConfig, data: DataBundle) -> Task:
    """The task ``cfg.kind`` for ``data``.

    Raises:
        ConfigError: an unknown kind, or a task that does not fit the data.
    """
    return TASKS.get(cfg.kind)(cfg, data)


__all__ = ["TASKS", "Task", "build_task"]
