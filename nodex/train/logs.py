"""Run logging: TensorBoard scalars/figures/hparams, ``metrics.jsonl`` and console lines."""

from __future__ import annotations

import io
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


def _hparam_value(value: Any) -> int | float | str:
    """A value TensorBoard's hparams accept: numbers and strings as they are, booleans and ``None`` as Hydra
    writes them (``true``/``false``/``null``; torch's writer would store a boolean as the number 0 or 1), anything
    else (lists, mappings) as JSON text."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float, str)):
        return value
    return json.dumps(value, default=str)


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

            # a resumed run's first step: TensorBoard drops the events a killed run wrote from it on (the same
            # steps are logged again), as metrics.jsonl's rows after keep_until are dropped above
            purge = keep_until + 1 if append and keep_until is not None else None
            self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)

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
        import matplotlib.pyplot as plt

        name = tag.removeprefix("plots/").replace("/", "_")
        path = self.run_dir / "plots" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # a failed write (disk full) leaves neither a torn png nor a .tmp
        png = io.BytesIO()
        try:
            fig.savefig(png, dpi=100, bbox_inches="tight", format="png")  # drawn once, for the file and TensorBoard
        finally:
            plt.close(fig)
        try:
            tmp.write_bytes(png.getvalue())
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        if self.writer is not None:
            png.seek(0)
            image = plt.imread(png, format="png")  # (H, W, 4) floats in [0, 1]: the same pixels as the file
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def histogram(self, tag: str, values: Any, step: int) -> None:
        if self.writer is not None:
            self.writer.add_histogram(tag, values, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], run_values: dict[str, float], step: int) -> None:
        """The run's row in TensorBoard's HPARAMS tab: ``hparams`` (name -> value, see :func:`_hparam_value`) and
        ``run_values`` (run-level numbers such as ``params``, logged once as ``run/<name>`` scalars at ``step``).

        Only the session start and end summaries are written, no per-run experiment summary: TensorBoard then
        takes the hparam columns from the union of every run's keys (a run that overrides a key another run does
        not still shows it) and the metric columns from the runs' scalars, whose last values are the final ones
        (``test/*`` are logged once, at the end). ``SummaryWriter.add_hparams`` would instead write an experiment
        summary per run (TensorBoard shows the columns of one arbitrary run) and copy every metric into a
        sub-run as ``hparam/*`` scalars (the single points that cluttered the Scalars tab)."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        clean = {k: _hparam_value(v) for k, v in hparams.items()}
        _, start, end = hparams_summaries(clean, {})
        for name, value in run_values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"run/{name}", float(value), step)
        self.writer.file_writer.add_summary(start)
        self.writer.file_writer.add_summary(end)

    def close(self) -> None:
        """Close the files; a write that fails here (disk full) was reported by the write that failed first."""
        for close in (self._jsonl.close, self.writer.close if self.writer is not None else None):
            try:
                if close is not None:
                    close()
            except OSError:
                pass
