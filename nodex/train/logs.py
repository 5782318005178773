"""Run logging: TensorBoard scalars/figures/hparams, ``metrics.jsonl`` and console lines."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("nodex")


class RunLogger:
    """Writes every logged scalar to TensorBoard and one JSON object per call to
    ``metrics.jsonl`` in ``run_dir``. ``tensorboard=False`` keeps only the JSON lines."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, append: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a" if append else "w")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in values.items()}
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self.writer is not None:
            for key, value in clean.items():
                self.writer.add_scalar(key, value, step)

    def figure(self, tag: str, fig: Any, step: int) -> None:
        """Save ``fig`` as ``plots/<name>.png`` (``tag`` = ``plots/<name>``; other slashes become ``_``)
        and to TensorBoard under ``tag``; closes the figure."""
        name = tag.removeprefix("plots/").replace("/", "_")
        path = self.run_dir / "plots" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        if self.writer is not None:
            self.writer.add_figure(tag, fig, step, close=True)
        else:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def histogram(self, tag: str, values: Any, step: int) -> None:
        if self.writer is not None:
            self.writer.add_histogram(tag, values, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        final = {f"hparam/{k}": float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)}
        self.writer.add_hparams(clean, final, run_name=".")

    def close(self) -> None:
        self._jsonl.close()
        if self.writer is not None:
            self.writer.close()
