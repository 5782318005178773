"""``nodex plot``: a trained run's figures redrawn from its checkpoint, in the format and resolution asked for.

The model comes back with :func:`nodex.load`, its data with :func:`nodex.load_data` (the run's own splits), the
figures from :mod:`nodex.viz` (those that fit the model, or the ones named). They go to ``out``; by default
``RUN/plots/redrawn-last/`` (``redrawn-best/`` for ``which=best``), beside the run's training-time ``plots/*.png``,
which are never replaced: an ``out`` that would overwrite one is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nodex.errors import ConfigError

FORMATS = ("png", "pdf", "svg")
WHICH = ("last", "best")
MAX_DPI = 1200


class PlotRefused(ConfigError):
    """A ``nodex plot`` setting that cannot be drawn (format, dpi, a figure name, the output dir): exit 2."""


def plot_limits(cfg: DictConfig) -> tuple[float, float, float, float] | None:
    """``limits=[x1_from, x1_to, x2_from, x2_to]``: the plotted range of the 2-D figures (``None``: their own).

    Raises:
        PlotRefused: not four finite numbers with each ``from`` below its ``to``.
    """
    import math

    value = cfg.get("limits")
    if value is None:
        return None
    items = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
    try:
        limits = tuple(float(v) for v in items) if isinstance(items, (list, tuple)) else ()
    except (TypeError, ValueError):
        limits = ()
    if len(limits) != 4 or not all(map(math.isfinite, limits)) or limits[0] >= limits[1] or limits[2] >= limits[3]:
        raise PlotRefused(f"limits={value} must be [x1_from, x1_to, x2_from, x2_to], four finite numbers, each from "
                          "below its to (e.g. limits=[-3,3,-3,3])")
    return limits  # type: ignore[return-value]


def plot_settings(cfg: DictConfig) -> tuple[str, int, list[str] | None]:
    """``(format, dpi, figure names or None for all)`` from the plot config, checked.

    Raises:
        PlotRefused: a format other than png/pdf/svg, a dpi that is not an integer in [1, 1200], an empty list.
    """
    fmt = str(cfg.get("format", "png")).lower()
    if fmt not in FORMATS:
        raise PlotRefused(f"format={cfg.get('format')!r} is not a figure format; choose one of: {', '.join(FORMATS)}")
    dpi = cfg.get("dpi", 100)
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 1 <= dpi <= MAX_DPI:
        raise PlotRefused(f"dpi={dpi!r} must be a positive integer (dots per inch, at most {MAX_DPI}), e.g. dpi=150")
    which = str(cfg.get("which", "last"))
    if which not in WHICH:
        raise PlotRefused(f"which={which!r}; choose one of: {', '.join(WHICH)}")
    return fmt, dpi, _names(cfg.get("figures"))


def _names(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
    items = items.split(",") if isinstance(items, str) else items if isinstance(items, (list, tuple)) else [items]
    names = [str(n).strip() for n in items if str(n).strip()]
    if not names:
        raise PlotRefused("figures= names no figure: give figures=NAME[,NAME...], or leave it out for all of them")
    return names


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory of a checkpoint file (``RUN/checkpoints/last.pt`` -> ``RUN``; else the file's folder)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def default_out(checkpoint: Path) -> Path:
    """``RUN/plots/redrawn-<last|best>``: beside the training-time figures, one folder per checkpoint."""
    return run_dir_of(checkpoint) / "plots" / f"redrawn-{checkpoint.stem}"


def _out_dir(cfg: DictConfig, checkpoint: Path, names: list[str], fmt: str) -> Path:
    """Where the figures go; refused when that would replace a training-time figure of the run."""
    out = default_out(checkpoint) if cfg.get("out") in (None, "") else Path(str(cfg.out)).expanduser()
    if out.exists() and not out.is_dir():
        raise PlotRefused(f"out={out} is a file; give a directory (created when missing)")
    training = run_dir_of(checkpoint) / "plots"
    if out.resolve() == training.resolve():
        clash = next((n for n in names if (out / f"{n}.{fmt}").exists()), None)
        if clash is not None:
            raise PlotRefused(f"out={out} holds the run's training-time figures ({clash}.{fmt} would be replaced); "
                              f"choose another out=, or leave it out for {default_out(checkpoint)}")
    return out


def run_plot(cfg: DictConfig) -> dict[str, Any]:
    """Redraw the figures of ``cfg.ckpt`` (a run dir, ``checkpoints/{cfg.which}.pt``, or a ``.pt`` file).

    Returns:
        ``{"checkpoint": Path, "out": Path, "written": [Path, ...], "replaced": int}`` (``replaced``: files of an
        earlier redraw in ``out`` that this one rewrote).

    Raises:
        PlotRefused: a bad format, dpi, ``which``, figure name (the message lists the figures that fit) or ``out``.
        CheckpointError: a missing, corrupt or foreign checkpoint (:func:`nodex.load`).
    """
    import nodex
    from nodex.train.checkpoint import resolve_checkpoint
    from nodex.train.tasks import build_task
    from nodex.viz.diagnostics import available, figures, save

    fmt, dpi, names = plot_settings(cfg)
    limits = plot_limits(cfg)
    which = str(cfg.get("which", "last"))
    checkpoint = resolve_checkpoint(cfg.ckpt, which)
    model, run_cfg = nodex.load(cfg.ckpt, which=which)
    data = nodex.load_data(run_cfg)
    task = build_task(run_cfg.task, data)
    metrics = run_dir_of(checkpoint) / "metrics.jsonl"
    fit = available(model, data, task, metrics=metrics)
    unknown = [n for n in names or [] if n not in fit]
    if unknown:
        raise PlotRefused(f"figures={unknown[0]} is not a figure of this run; the figures that fit: "
                          f"{', '.join(fit) or 'none'}")
    chosen = [n for n in fit if names is None or n in names]
    out = _out_dir(cfg, checkpoint, chosen, fmt)
    replaced = sum((out / f"{n}.{fmt}").exists() for n in chosen)
    written = save(figures(model, data, task, names=chosen, metrics=metrics, limits=limits), out, format=fmt, dpi=dpi)
    return {"checkpoint": checkpoint, "out": out, "written": written, "replaced": replaced}
