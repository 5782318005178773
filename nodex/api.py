"""The Python entry points: a model from the same presets the CLI uses, and a trained model back from its run.

cfg = nodex.compose(["model=galnode", "data=rings"])
model = nodex.build(cfg)                          # an nn.Module: model(x).y_hat, model.nfe
model, cfg = nodex.load("outputs/train/DATE/TIME")  # trained weights, without building the dataset
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from nodex.models import DataSpec
from nodex.train.checkpoint import read_run_checkpoint, restore_weights


def data_spec(cfg: DictConfig) -> DataSpec:
    """The shapes ``cfg``'s model must fit, read off its dataset and task (this builds the dataset)."""
    from nodex.data import build_data
    from nodex.train.tasks import build_task

    data = build_data(cfg.data, int(cfg.seed), "cpu")
    return DataSpec(data.input_shape, build_task(cfg.task, data).n_outputs)


def build(cfg: DictConfig, *, spec: DataSpec | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The model ``cfg.model`` (initialised from ``cfg.seed``, as ``nodex train`` does) on ``device``.

    Args:
        cfg: a composed config (:func:`nodex.compose`).
        spec: input shape and readout width; default: read off ``cfg``'s dataset and task.
        device: where the parameters live.

    Raises:
        ConfigError: a slot that does not fit the data or the other slots.
    """
    from nodex.train.setup import build_run_model

    spec = spec or data_spec(cfg)
    torch.manual_seed(int(cfg.seed))
    return build_run_model(cfg, spec, device)


def load(path: str | Path, *, which: str = "last", device: str | torch.device = "cpu") -> tuple[nn.Module, DictConfig]:
    """A trained model and its run config from a run directory or a checkpoint file.

    Args:
        path: ``outputs/train/DATE/TIME`` (takes ``checkpoints/{which}.pt``) or a ``.pt`` file.
        which: ``last`` or ``best`` (run directories only).
        device: where the parameters are loaded.

    Returns:
        ``(model, cfg)``: the model in eval mode with the checkpoint's weights, and the run's config.

    Raises:
        CheckpointError: a missing, corrupt or foreign file, or weights that do not fit the config's model.
    """
    file, ckpt, cfg = read_run_checkpoint(path, which, map_location=device)
    model = build(cfg, spec=_saved_spec(ckpt) or data_spec(cfg), device=device)
    return restore_weights(model, ckpt, repr(str(file))).eval(), cfg


def _saved_spec(ckpt: dict[str, Any]) -> DataSpec | None:
    spec = ckpt.get("data_spec")
    if not isinstance(spec, dict):
        return None  # written before checkpoints carried it: the caller reads it off the dataset
    return DataSpec(tuple(int(d) for d in spec["input_shape"]), int(spec["n_outputs"]))


def load_data(cfg: DictConfig, device: str | torch.device = "cpu"):
    """The data splits of a run config (``nodex.load``'s second value): a ``DataBundle`` with ``train``, ``val``
    and ``test`` as ``(X, y)`` tensor pairs, drawn from ``cfg.seed`` exactly as the run drew them."""
    from nodex.data import build_data

    return build_data(cfg.data, int(cfg.seed), device)
