"""What resuming may change, and what it may not.

``trainer.resume=auto`` continues from the run dir's own ``checkpoints/last.pt`` when there is one and starts fresh
otherwise: what a requeued Slurm job needs, since it runs the same command in the same dir again; a run dir with
only ``best.pt`` is refused (say which: resume from it, or start over elsewhere), and a completed run is left as it
is (:class:`AlreadyCompleted`). :func:`plan_resume` decides all of this before anything is written. A resume whose
config differs from the checkpoint's in a key that decides the run (model, data, task, solver, optimizer name,
seed, ...) is refused, naming the keys; the keys in :data:`MAY_CHANGE` may differ and are applied after the state is
loaded (:func:`load_resume` brings the weights, step and every stream back into the members). The learning-rate
schedule continues where it stopped; a ``trainer.optim.lr`` that differs from the checkpoint
run's is a deliberate new base rate (said in ``train.log``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from nodex.errors import CheckpointError
from nodex.runs import run_record
from nodex.train.checkpoint import read_run_checkpoint, restore_weights
from nodex.train.members import Member

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


def apply_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float, saved_lr: float) -> bool:
    """After loading an optimizer's and scheduler's state: the schedule continues where it stopped. Only a
    deliberately new rate (``lr``, the config's, differs from ``saved_lr``, the checkpoint run's) changes it: the
    base rate becomes ``lr`` and the current rate is rescaled by ``lr / saved_lr`` (the schedule's position is kept).
    Returns whether the rate changed."""
    if float(lr) == float(saved_lr):
        return False
    scale = float(lr) / float(saved_lr)
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * scale
        if "initial_lr" in group:
            group["initial_lr"] = lr
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return True


class ResumeRefused(CheckpointError):
    """A resume that does not fit the run dir's run (another config, ``K`` or step count): refused before anything
    is written, the run's own record kept."""


class AlreadyCompleted(Exception):
    """``trainer.resume=auto`` in a run dir whose run completed its steps: nothing to do (a requeued job that had
    already finished). Not an error: the CLI says so in one line and exits 0."""


def _task_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's resolved config as its checkpoints record it (a Hydra config without its ``hydra`` node)."""
    if "hydra" in cfg:
        cfg = copy.deepcopy(cfg)
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True)


def planned_steps(trainer: dict[str, Any], data: dict[str, Any]) -> int | None:
    """The run's step budget from its config (``trainer.epochs`` × batches per epoch when set), ``None`` when only
    the built data can tell (epochs of a dataset of unknown size)."""
    if not trainer.get("epochs"):
        return int(trainer["max_steps"])
    n, batch = data.get("n_train"), trainer.get("batch_size")
    if not isinstance(n, int):
        return None
    return int(trainer["epochs"]) * (1 if not batch or batch >= n else n // batch)


def _saved_size(path: Path) -> int:
    """How many members the run at ``path`` trained: an ensemble dir holds ``member-k/``, a run dir ``checkpoints/``."""
    if path.is_dir() and not (path / "checkpoints").is_dir() and (path / "member-0").is_dir():
        return len(list(path.glob("member-*")))
    return 1


def held_checkpoints(run_dir: Path) -> list[Path]:
    """The training checkpoints a run dir already holds (its own, or its ensemble members'): a run that trained
    there, whose record only that run may write."""
    run_dir = Path(run_dir)
    return sorted(p for d in (run_dir, *run_dir.glob("member-*")) for p in (d / "checkpoints").glob("*.pt"))


def _taken_back(path: Path, step: int, run_dir: Path) -> str | None:
    """Why continuing ``run_dir``'s own run from ``path`` (at ``step``) would drop part of its record: its
    ``last.pt`` is further on. ``None`` when it would not."""
    if path.is_file() and path.name == "last.pt":
        return None
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():  # only best.pt (a run stopped before its last save): continuing from it is the way on
        return None
    _, saved, _ = read_run_checkpoint(last, "last", use="resume from")
    if int(saved["step"]) <= step:
        return None
    return (f"trainer.resume={path} would take {run_dir} back from step {int(saved['step'])} to {step} and drop its "
            "record after it; resume from it into a new hydra.run.dir (or continue with trainer.resume=auto)")


def _check_fresh_start(setting: Any, run_dir: Path, size: int, held: list[Path]) -> None:
    """A run that starts from scratch in ``run_dir`` may: a dir with ``best.pt`` only under ``auto`` (say how to go
    on), or any trained run's checkpoints (``held``), refuse it.

    Raises:
        CheckpointError: one line saying how to continue the run there, or where to start a new one.
    """
    best = run_dir / ("member-0" if size > 1 else "") / "checkpoints" / "best.pt"
    if str(setting) == "auto" and best.is_file():
        raise CheckpointError(
            f"trainer.resume=auto: {run_dir} holds checkpoints/best.pt but no last.pt; continue from the best "
            f"one with trainer.resume={best.parent.parent if size > 1 else best}, or start over with "
            "trainer.resume=null in a new hydra.run.dir")
    if held:
        raise CheckpointError(
            f"{run_dir} already holds a trained run ({held[0].relative_to(run_dir)}); continue it with "
            "trainer.resume=auto, or start a new run in another hydra.run.dir")


def plan_resume(cfg: DictConfig, run_dir: Path) -> Path | None:
    """What ``trainer.resume`` of ``cfg`` (the run's config, with or without Hydra's node) means for a run into
    ``run_dir``, decided before anything is written: the checkpoint (or ensemble dir) to continue from, or ``None``
    to start fresh. Bad values of other keys are left to the run (``None``: it reports them).

    Raises:
        AlreadyCompleted: ``auto`` (or the run's own dir) on a run that completed its steps.
        CheckpointError: one line: a dir with ``best.pt`` only; a new run, or another run's checkpoint, into a dir
            that holds a trained run; a checkpoint that would take the dir's own run back (``best.pt`` behind its
            ``last.pt``); a different run (names the keys); another ensemble size; a step budget below the
            checkpoint's step; another dir resuming a run that has no steps left.
    """
    try:
        current = _task_config(cfg)
        size = int(current["trainer"].get("ensemble", 1) or 1)
        setting = current["trainer"].get("resume")
    except Exception:  # a value the run itself will report (with its result.json)
        return None
    run_dir = Path(run_dir)
    path = resume_path(setting, run_dir, size)
    held = held_checkpoints(run_dir)
    if path is None:
        _check_fresh_start(setting, run_dir, size, held)
        return None
    source = path.parent.parent if path.is_file() and path.parent.name == "checkpoints" else path
    if held and source.resolve() != run_dir.resolve():
        raise CheckpointError(
            f"trainer.resume={path} into {run_dir}, which holds another run ({held[0].relative_to(run_dir)}): resume "
            "into a new hydra.run.dir, or continue that run with trainer.resume=auto")
    saved_size = _saved_size(source)
    if saved_size != size:
        saved = f"an ensemble of {saved_size}" if saved_size > 1 else "a single run"
        raise CheckpointError(f"trainer.resume={path}: that is {saved}, this run is trainer.ensemble={size}; resume "
                              f"with trainer.ensemble={saved_size}")
    _, ckpt, _ = read_run_checkpoint(path / "member-0" if size > 1 else path, "last", use="resume from")
    member = copy.deepcopy(current)
    member["trainer"]["ensemble"] = 1  # a member's checkpoint holds the config of its own run
    check_resumable(ckpt["config"], member, path)  # load_checkpoint upgraded it
    step, total = int(ckpt["step"]), planned_steps(current["trainer"], current.get("data", {}))
    rewind = _taken_back(path, step, run_dir) if held else None
    if rewind is not None:
        raise CheckpointError(rewind)
    if total is not None and total < step:
        raise CheckpointError(f"trainer.resume={path}: the checkpoint is at step {step}, beyond this run's "
                              f"{total} steps; set trainer.max_steps above {step} to continue it")
    if total == step:
        if source.resolve() != run_dir.resolve():
            raise CheckpointError(f"trainer.resume={path}: that run has no steps left (it ends at step {step}); "
                                  f"continue it with a larger trainer.max_steps (above {step})")
        if run_record(run_dir).get("status") == "completed":
            raise AlreadyCompleted(f"{run_dir} already completed its {step} steps; nothing to do (a larger "
                                   "trainer.max_steps continues it)")
    return path


def load_resume(path: Path, members: list[Member], device: torch.device) -> list[dict[str, Any]]:
    """Continue every member from its checkpoint (``path``, or ``path/member-k`` in an ensemble): weights, step,
    best, every RNG stream and the epoch position; returns the checkpoints (the optimizer is restored by
    :func:`nodex.train.run._resume_optimizer` once it exists). Everything that decides the rest of the run comes back.

    Raises:
        CheckpointError: not a nodex training checkpoint, a different run (names the keys), weights that do not fit
            this model, or ensemble members saved at different steps.
    """
    ckpts = []
    for m in members:
        where = path / f"member-{m.index}" if len(members) > 1 else path
        _, ckpt, _ = read_run_checkpoint(where, "last", map_location=device, use="resume from")
        if not isinstance(ckpt.get("rng"), dict):
            raise CheckpointError(f"trainer.resume={where}: the checkpoint holds no RNG state; "
                                  "resume from a checkpoints/last.pt written by nodex train")
        check_resumable(ckpt["config"], m.config, where)
        restore_weights(m.model, ckpt, f"trainer.resume={where}", "; resume with the run's own config")
        ckpts.append(ckpt)
    steps = sorted({int(c["step"]) for c in ckpts})
    if len(steps) > 1:
        raise CheckpointError(f"trainer.resume={path}: the members' last.pt are at different steps ({steps}); "
                              "the ensemble cannot continue as one run: start it again")
    for ckpt, m in zip(ckpts, members):
        restore_state(ckpt, m)
    return ckpts


def restore_state(ckpt: dict[str, Any], m: Member) -> None:
    rng = ckpt["rng"]
    m.state.step = int(ckpt["step"])
    m.state.best = ckpt.get("best")
    torch.set_rng_state(rng["torch"])
    m.state.batch_gen.set_state(rng["batches"])
    m.state.epoch_start, m.state.epoch_pos = rng.get("epoch_start"), int(rng.get("epoch_pos") or 0)
    if m.data.sampler is not None and rng.get("fresh") is not None:
        m.data.sampler.set_state(rng["fresh"])
    progress = ckpt.get("progress") or {}
    m.state.window, m.state.totals = progress.get("window"), progress.get("totals")
    m.state.member_totals = progress.get("member_totals")
