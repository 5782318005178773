"""Run logging: TensorBoard scalars/figures/hparams, ``metrics.jsonl`` and console lines."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger("nodex")


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", -1))
    except (ValueError, AttributeError):
        return 1 << 62  # a torn last line of a killed run: dropped with the rows after the checkpoint


class RunLogger:
    """Writes every logged scalar to TensorBoard and one JSON object per call to
    ``metrics.jsonl`` in ``run_dir``. ``tensorboard=False`` keeps only the JSON lines."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, append: bool = False,
                 keep_until: int | None = None) -> None:
        """``append``: continue ``metrics.jsonl``; ``keep_until``: a resumed run's step — rows logged after it (by a
        run killed after its last checkpoint) are dropped, since the resumed run logs those steps again."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        if append and keep_until is not None and path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip() and _step(line) <= keep_until]
            path.write_text("".join(f"{row}\n" for row in rows))
        self._jsonl = open(path, "a" if append else "w")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One ``metrics.jsonl`` row and the TensorBoard scalars of ``step``.

        Raises:
            ResourceError: a log file could not be written (disk full): one line naming it.
        """
        clean = {k: float(v) for k, v in values.items()}
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in clean.items()}}
        target = self.run_dir / "metrics.jsonl"
        try:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
            target = self.run_dir / "TensorBoard events"
            if self.writer is not None:
                for key, value in clean.items():
                    self.writer.add_scalar(key, value, step)
        except OSError as exc:
            from nodex.errors import ResourceError

            raise ResourceError(f"could not write {target} at step {step} ({exc}); free disk space or point "
                                "hydra.run.dir elsewhere (the last checkpoint is kept)") from None

    def figure(self, tag: str, fig: Any, step: int) -> None:
        """Save ``fig`` as ``plots/<name>.png`` (``tag`` = ``plots/<name>``; other slashes become ``_``)
        and to TensorBoard under ``tag``; closes the figure."""
        name = tag.removeprefix("plots/").replace("/", "_")
        path = self.run_dir / "plots" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # a failed write (disk full) leaves neither a torn png nor a .tmp
        try:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)
            import matplotlib.pyplot as plt

            plt.close(fig)
            raise
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
        """Close the files; a write that fails here (disk full) was reported by the write that failed first."""
        for close in (self._jsonl.close, self.writer.close if self.writer is not None else None):
            try:
                if close is not None:
                    close()
            except OSError:
                pass
