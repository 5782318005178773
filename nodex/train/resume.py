"""What resuming may change, and what it may not.

``trainer.resume=auto`` continues from the run dir's own ``checkpoints/last.pt`` when there is one and starts fresh
otherwise: what a requeued Slurm job needs, since it runs the same command in the same dir again. A resume whose
config differs from the checkpoint's in a key that decides the run (model, data, task, solver, optimizer name,
seed, ...) is refused, naming the keys; the keys in :data:`MAY_CHANGE` may differ and are applied after the state is
loaded (a new learning rate replaces the checkpoint's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nodex.errors import CheckpointError

# Keys (or prefixes ending in ".") that a resumed run may set differently from the checkpoint's run.
MAY_CHANGE = (
    "trainer.max_steps",
    "trainer.epochs",
    "trainer.optim.lr",
    "trainer.resume",
    "trainer.progress",
    "trainer.plots",
    "trainer.plot_every",
    "trainer.log_every",
    "trainer.val_every",
    "trainer.checkpoint_every",
    "trainer.num_threads",
    "trainer.device",
    "trainer.eval_batch_size",
    "trainer.tf32",
    "logger.",
    "monitor",
    "experiment_name",
)


def resume_path(setting: str | None, run_dir: Path, size: int = 1) -> Path | None:
    """The checkpoint to continue from: ``auto`` -> ``run_dir/checkpoints/last.pt`` if it exists (else ``None``:
    start fresh); ``None``/empty -> ``None``; anything else is a run dir or checkpoint path, returned as given.

    A seed ensemble (``size > 1``) continues from an ensemble dir (its ``member-k/checkpoints/last.pt``): ``auto``
    -> ``run_dir`` when member 0 has a ``last.pt``."""
    if not setting:
        return None
    if str(setting) == "auto":
        last = Path(run_dir) / ("member-0" if size > 1 else "") / "checkpoints" / "last.pt"
        if not last.is_file():
            return None
        return Path(run_dir) if size > 1 else last
    return Path(str(setting))


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE)


def resume_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between the checkpoint's run config and this one and may not change."""
    a, b = _flat(saved), _flat(current)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>") and not _may_change(k))


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raises:
    CheckpointError: one line naming the keys that differ (and the values, for the first few)."""
    conflicts = resume_conflicts(saved, current)
    if conflicts:
        a, b = _flat(saved), _flat(current)
        shown = ", ".join(f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in conflicts[:4])
        more = f" and {len(conflicts) - 4} more" if len(conflicts) > 4 else ""
        raise CheckpointError(
            f"trainer.resume={path}: this config differs from the checkpoint's run in {shown}{more}; "
            "resume with the run's "
            f"own settings (only {', '.join(k.rstrip('.') for k in MAY_CHANGE[:3])}, ... may change) or start a new run"
        )


def apply_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float) -> None:
    """After loading an optimizer's state: train on at ``lr`` (the config's), not the checkpoint's rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if "initial_lr" in group:
            group["initial_lr"] = lr
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
