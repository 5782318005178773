"""Checkpoints: atomic saves, and loads that never execute pickled code.

A checkpoint is a dict of tensors and plain values: ``model``, ``optimizer``, ``scheduler``
(state dicts), ``step``, ``config`` (the resolved run config as a plain dict), ``best``
(monitored value), ``rng`` (generator states), ``data_spec`` (``{"input_shape": [...],
"n_outputs": N}``: what the model was built for, so it can be rebuilt without its dataset)
``progress`` (the loop's sums since its last log point and the run's NFE totals) and ``format`` (:data:`FORMAT`).
Checkpoints written before ``data_spec`` or ``progress`` existed lack them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nodex.config import upgrade_run_config
from nodex.errors import CheckpointError
from nodex.runs import launch_dirs
from nodex.targets import add_search_dir

FORMAT = "nodex-checkpoint-v1"


def checkpoint_state(
    model: torch.nn.Module,
    optimizer_state: dict[str, Any],
    scheduler: Any,
    state: Any,
    config: dict[str, Any] | None,
    data_spec: dict[str, Any] | None,
    sampler: Any = None,
    progress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of one run: ``model``'s state dict, the optimizer state its own
    optimizer has, the scheduler's, and ``state``'s (a :class:`~nodex.train.members.LoopState`)
    step, best value and batch-generator state (with the epoch's start and position), the fresh-batch stream of
    ``sampler`` (``data.resample``) and the global torch RNG state: everything that decides the rest of the run.
    ``progress``: the loop's running sums since its last log point (``window``), the run's NFE ``totals`` and the
    member's own (``member_totals``), so that
    a run stopped between two log points logs the same next row and ``result.json`` as the uninterrupted run."""
    return {
        "model": model.state_dict(), "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": state.step, "best": state.best, "config": config,
        "rng": {
            "torch": torch.get_rng_state(), "batches": state.batch_gen.get_state(),
            "epoch_start": state.epoch_start, "epoch_pos": state.epoch_pos,
            "fresh": sampler.get_state() if sampler is not None else None,
        },
        "data_spec": data_spec,
        "progress": progress,
    }


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + rename): a crash mid-write never
    destroys the previous checkpoint, and a failed write leaves no temp file.

    Raises:
        CheckpointError: the file could not be written (disk full, read-only directory).
    """
    save_checkpoints([(state, path)])


def save_checkpoints(items: list[tuple[dict[str, Any], Path]]) -> None:
    """Write several checkpoints (an ensemble's members, one step) as one: every temp file is written before any is
    renamed, so a crash leaves all of them at the previous step or all at the new one (but for the instant of the
    renames), and a failed write renames none and leaves no temp file.

    Raises:
        CheckpointError: a file could not be written (names it; the previous files are kept).
    """
    written: list[tuple[Path, Path]] = []
    for state, path in items:
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({**state, "format": FORMAT}, tmp)
        except (OSError, RuntimeError) as exc:  # disk full or read-only: torch reports the former as a RuntimeError
            for done, _ in [*written, (tmp, path)]:
                done.unlink(missing_ok=True)
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"could not write {path} ({reason}); free disk space or point hydra.run.dir "
                                  f"elsewhere{' (the previous ' + path.name + ' is kept)' if path.exists() else ''}"
                                  ) from None
        written.append((tmp, path))
    for tmp, path in written:
        os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a nodex checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: missing file, unreadable/corrupt file, or not a nodex checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist: "
                              "pass a run directory or a checkpoints/*.pt file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, foreign pickle...
        reason = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() else type(exc).__name__
        best = path.parent / "best.pt"
        fix = (f"continue from {best} (trainer.resume={best}), or start over in a new hydra.run.dir"
               if path.name == "last.pt" and best.is_file() else "pass a checkpoints/last.pt or best.pt written by nodex")
        raise CheckpointError(f"{str(path)!r} is not a readable checkpoint ({reason}); {fix}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a nodex checkpoint (no '{FORMAT}' marker); "
                              "pass a checkpoints/last.pt or best.pt written by nodex")
    if isinstance(state.get("config"), dict):  # an older run's config, in today's layout (solver.S moved)
        state["config"] = upgrade_run_config(state["config"])
    return state


def resolve_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A checkpoint file from a run directory (``checkpoints/{which}.pt``) or a file path.

    Raises:
        CheckpointError: the path does not exist, or the directory holds no checkpoint.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / "checkpoints" / f"{which}.pt"
        if candidate.is_file():
            return candidate
        if not (path / "checkpoints").is_dir() and (path / "member-0" / "checkpoints").is_dir():
            last = len(list(path.glob("member-*"))) - 1
            raise CheckpointError(f"{str(path)!r} is a seed ensemble: pass one member's run directory, "
                                  f"{path / 'member-0'} ... {path / f'member-{last}'}")
        others = sorted(p.stem for p in (path / "checkpoints").glob("*.pt"))
        if others:
            raise CheckpointError(f"run directory {str(path)!r} has no checkpoints/{which}.pt (a run without a "
                                  f"validation split keeps no best.pt): choose one it has, which={others[0]}")
        raise CheckpointError(f"run directory {str(path)!r} has no checkpoints/{which}.pt: "
                              "pass a nodex run directory (one that holds checkpoints/)")
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist: "
                              "pass a run directory or a checkpoints/*.pt file")
    if which != "last" and path.stem != which:  # "last" is the default: a file named on its own wins over it
        raise CheckpointError(f"which={which} picks a run directory's checkpoints/{which}.pt, but {str(path)!r} names "
                              f"a file: pass the run directory with which={which}, or the file alone")
    return path


def read_run_checkpoint(path: str | Path, which: str = "last", map_location: str | torch.device = "cpu",
                        *, use: str = "load") -> tuple[Path, dict[str, Any], DictConfig]:
    """The one way a run's checkpoint is opened (``nodex.load``, ``nodex eval``, ``nodex plot``, resume): the file
    (``path`` a run directory or a ``.pt``), its contents and its run config (today's layout); the folder the run was
    started from is searched for the run's own ``_target_`` modules.

    Raises:
        CheckpointError: missing, corrupt or foreign file, or one without a run config (``use`` words the fix).
    """
    file = resolve_checkpoint(path, which)
    ckpt = load_checkpoint(file, map_location=map_location)
    if not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{str(file)!r} holds no run config; {use} a checkpoint written by nodex train")
    for origin in launch_dirs(file.parent.parent):
        add_search_dir(origin)
    return file, ckpt, OmegaConf.create(ckpt["config"])


def restore_weights(model: torch.nn.Module, ckpt: dict[str, Any], where: str, fix: str = "") -> torch.nn.Module:
    """Load ``ckpt["model"]`` into ``model`` (the one place weights come back).

    Raises:
        CheckpointError: the weights do not fit the model (``where`` names the checkpoint, ``fix`` what to do).
    """
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0][:120]
        raise CheckpointError(f"{where} does not fit the model its config builds ({reason}){fix}") from None
    return model
