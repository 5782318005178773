"""Training curves read from a run's ``metrics.jsonl`` (one JSON object per logged step): NFE
per step (forward and backward) and accuracy against the step, for models whose figures are
curves rather than state plots (image classifiers)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from nodex.viz.style import LEGEND_FONTSIZE, new_figure  # noqa: E402

NFE_KEYS = ("train/nfe_forward", "train/nfe_backward", "val/nfe_forward")


def read_metrics(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``key -> (steps, values)`` from ``metrics.jsonl`` (missing or null values skipped)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    if not path.exists():
        return series
    for line in path.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(row["step"]))
                values.append(float(value))
    return series


def training_curves(series: dict[str, tuple[list[int], list[float]]]) -> Figure | None:
    """NFE per step and accuracy (every ``*accuracy`` key) against the step; ``None`` when
    ``series`` has neither."""
    nfe = [k for k in NFE_KEYS if k in series]
    acc = sorted(k for k in series if k.endswith("accuracy"))
    if not nfe and not acc:
        return None
    fig, (left, right) = new_figure(1, 2, figsize=(10, 4.2))
    for ax, keys, label in ((left, nfe, "NFE per step"), (right, acc, "accuracy")):
        for key in keys:
            steps, values = series[key]
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=key)
        ax.set(xlabel="training step", ylabel=label, title=label)
        if keys:  # below the panel: the curves fill it
            ax.legend(fontsize=LEGEND_FONTSIZE, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return fig
