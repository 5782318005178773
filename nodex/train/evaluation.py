"""``nodex eval``: a trained run's checkpoint evaluated again, on its own data splits, with the command line's
solver, data and evaluation settings applied to its run config (and nothing that would change what was trained).

What the command line may change: a solver preset and ``solver.*`` keys, ``data.*`` keys of the run's dataset
(``data.n_test``...), ``task.*`` keys but ``task.kind`` and ``task.regularizer.*`` (training only),
``trainer.eval_batch_size`` and ``trainer.tf32``, plus eval's own ``ckpt``, ``split``, ``which`` and ``device``. Everything else is refused in one line (exit 2): another
model, slot, dataset or task, a training setting (``trainer.max_steps``, ``trainer.optim.lr``, ``seed``...) that
evaluation would silently ignore, a key that is no setting at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nodex.errors import CheckpointError, ConfigError
from nodex.runs import override_key, versions, write_json
from nodex.train.checkpoint import read_run_checkpoint, restore_weights
from nodex.train.loop import evaluate
from nodex.train.setup import Pipeline, check_data_size, select_device

def _eval_pipeline(path: Path, run_cfg: DictConfig, device: torch.device) -> Pipeline:
    """What the checkpoint's run config (with the command line's overrides) builds, its values checked first.

    Raises:
        ConfigError: a bad override (``data.n_test=abc``, ``trainer.eval_batch_size=0``, ``trainer.device``).
        CheckpointError: a run config that builds nothing (keys missing or of the wrong kind).
    """
    from omegaconf.errors import OmegaConfBaseException

    try:
        size = run_cfg.trainer.get("eval_batch_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            raise ConfigError(f"trainer.eval_batch_size={size!r} must be a positive integer or null (a split at once)")
        check_data_size(run_cfg.data)
        return Pipeline(run_cfg, device)
    except (OmegaConfBaseException, KeyError, AttributeError, TypeError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        raise CheckpointError(f"{str(path)!r} holds a run config that builds no model ({reason}); evaluate a "
                              "checkpoint written by nodex train") from None


class EvalRefused(ConfigError):
    """A ``nodex eval`` switch that does not fit the checkpoint (another model, dataset or task): exit 2."""
    IDENTITY = {"model": "name", "data": "name", "task": "kind"}  # the keys that name a run's model, data and task


EVAL_KEYS = ("ckpt", "split", "which", "device")  # eval's own
GROUPS = ("solver", "model", "data", "task", "trainer", "logger")  # named groups: checked in _apply_eval_overrides
SETTINGS = ("solver.", "data.", "task.", "trainer.eval_batch_size", "trainer.tf32",  # what evaluation reads
            "trainer.device")  # refused with its own message (eval's key is device=)


def check_eval_keys(lines: list[str]) -> None:
    """Refuse command-line overrides that evaluation would ignore: a training setting, a slot of the model, a key
    that is no setting (``seed=7``, ``trainer.max_steps=1``, ``model/field=conv``, ``+foo=1``).

    Raises:
        EvalRefused: one line naming the key and what nodex eval takes.
    """
    for line in map(str, lines):
        key = override_key(line)
        if key.startswith("hydra.") or key in EVAL_KEYS or key in GROUPS:
            continue
        if key.startswith("model"):  # model.*, model/field=...: what was trained
            raise EvalRefused(f"{line} changes what the checkpoint was trained as; nodex eval cannot apply it: "
                              f"train a new run with {line}")
        if not key.startswith(SETTINGS) or key in ("data.name", "task.kind") or key.startswith("task.regularizer"):
            raise EvalRefused(f"{line}: nodex eval uses no such setting (it takes ckpt, split, which, device, a "
                              "solver, and solver.*, data.*, task.*, trainer.eval_batch_size keys); a training "
                              "setting belongs to nodex train")


def _trained_as(run_cfg: DictConfig, group: str) -> Any:
    """What names the run's ``group`` (its model name, data name, task kind); a dataset of the user's own
    (``_target_``, no name) is named by its target."""
    name = EvalRefused.IDENTITY[group]
    value = OmegaConf.select(run_cfg, f"{group}.{name}")
    return value if value is not None else OmegaConf.select(run_cfg, f"{group}._target_")


def _apply_eval_overrides(cfg: DictConfig, run_cfg: DictConfig, overrides: dict[str, Any], groups: dict[str, str],
                          path: Path) -> dict[str, Any]:
    """Apply group choices (``solver=rk4``; model, data, task must be the run's) and ``key=value`` overrides to the
    checkpoint's run config, in place; returns what changed (``{"solver.method": "rk4", ...}``)."""
    for group, choice in groups.items():
        if group not in EvalRefused.IDENTITY:
            if group != "solver":
                reads = " (of trainer.* it reads trainer.eval_batch_size)" if group == "trainer" else ""
                raise EvalRefused(f"{group}={choice}: nodex eval applies no training preset{reads}")
            continue
        trained = _trained_as(run_cfg, group)
        if _trained_as(cfg, group) != trained:
            raise EvalRefused(f"{group}={choice} does not fit the checkpoint (trained with {group}={trained}); "
                              f"nodex eval cannot switch it: train a new run with {group}={choice}")
    for key, value in overrides.items():
        if key.startswith("model.") or key in ("data.name", "task.kind"):
            raise EvalRefused(f"{key}={value} changes what the checkpoint was trained as; nodex eval cannot apply "
                              f"it: train a new run with {key}={value}")
    if "trainer.device" in overrides:  # the run's training device; nodex eval has its own key
        raise ConfigError(f"nodex eval picks its device with device=...: use device={overrides['trainer.device']}")
    before = _solver_of(run_cfg)
    if "solver" in groups:  # the whole preset (the command line's solver.* keys included) replaces the run's
        run_cfg.solver = OmegaConf.to_container(cfg.solver, resolve=True)
    for key, value in overrides.items():
        if OmegaConf.select(run_cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"{key} is not a key of the run's config; check the spelling (see "
                              f"{path.parent.parent / '.hydra' / 'config.yaml'})")
        OmegaConf.update(run_cfg, key, value)
    applied = {f"solver.{k}": v for k, v in _solver_of(run_cfg).items() if k not in before or before[k] != v}
    return {**applied, **{k: v for k, v in overrides.items() if not k.startswith("solver.")}}


def _solver_of(run_cfg: DictConfig) -> dict[str, Any]:
    """The run config's ``solver`` as a plain dict (``{}`` in a broken config: building it says what is wrong)."""
    node = OmegaConf.select(run_cfg, "solver")
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_dict(node) else {}


def run_eval(cfg: DictConfig, overrides: dict[str, Any], run_dir: str | Path,
             groups: dict[str, str] | None = None) -> dict[str, Any]:
    """Rebuild the model from a checkpoint's run config with ``groups`` (``{"solver": "rk4"}``) and ``overrides``
    (``{"solver.rtol": 1e-6}``) applied; evaluate ``cfg.split``, write ``eval.json`` (``applied``, ``solver``).

    Raises:
        EvalRefused: ``model=``, ``model.*``, another dataset or task (:func:`_apply_eval_overrides`).
        CheckpointError: missing/corrupt checkpoint, or a run directory without a (usable) config.
        ConfigError: a bad override value, split or device.
    """
    path, ckpt, run_cfg = read_run_checkpoint(cfg.ckpt, cfg.get("which", "last"), use="evaluate")
    applied = _apply_eval_overrides(cfg, run_cfg, overrides, groups or {}, path)
    device = select_device(cfg.get("device", "auto"), key="device")
    pipe = _eval_pipeline(path, run_cfg, device)
    restore_weights(pipe.model, ckpt, repr(str(path)))
    split = cfg.get("split", "test")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split={split!r}; choose one of: train, val, test")
    if getattr(pipe.data, split) is None:
        raise ConfigError(f"split={split}: the run's dataset has no {split} split; use split=test")
    metrics = evaluate(pipe.model, pipe.task, getattr(pipe.data, split), run_cfg.trainer.get("eval_batch_size"))
    payload = {"checkpoint": str(path), "split": split, "step": ckpt.get("step"), "overrides": overrides,
               "applied": applied, "solver": _solver_of(run_cfg),
               "metrics": {f"{split}/{k}": v for k, v in metrics.items()}, "device": str(device),
               "versions": versions()}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "eval.json", payload)
    return payload
