"""Measurements a claim needs that a run's own metrics do not hold, taken from the run's saved model.

``outer_leak``: the annuli claim (paper §E1) is that a flow which is a homeomorphism of the plane
(vanilla, depth-concat, Galërkin) followed by a linear readout cannot separate the rings: the
inner class is the preimage of a half-plane, an unbounded connected set, so if it holds the inner
ring it crosses the outer ring somewhere, the "thin leak channel" of the authors' decision maps.
The noisy test set rarely lands in that channel (test accuracy is often 1.0 either way), so the
probe classifies the outer ring itself, ``n`` points evenly spaced on the circle of radius 2
without noise, and returns the fraction labelled inner (the data's label 1). A data-controlled
field is no homeomorphism of the plane and need not leak.

Probes are written to ``RUN_DIR/probes.json`` (read back on later reports) and added to the
run's metrics as ``probe/NAME`` in memory; ``result.json`` is left as the run wrote it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional

import torch

PROBE_FILE = "probes.json"
INNER, OUTER_RADIUS = 1, 2.0  # the rings data: label 1 on radius 1, label 0 on radius 2


def circle(radius: float, n: int) -> torch.Tensor:
    """``n`` points evenly spaced on the circle of ``radius``, ``(n, 2)``."""
    angle = torch.arange(n, dtype=torch.float32) * (2 * math.pi / n)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)


@torch.no_grad()
def predicted_class(model: torch.nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """The class a trained classifier gives each row of ``x`` ``(N, d)``: a scalar readout
    thresholded at 0.5 (the annuli's MSE readout), otherwise the argmax; ``(N,)``."""
    out = []
    for chunk in x.split(batch):
        y_hat = model(chunk).y_hat
        out.append((y_hat[:, 0] > 0.5).long() if y_hat.shape[1] == 1 else y_hat.argmax(dim=1))
    return torch.cat(out)


def outer_leak(run_dir: Path, n: int = 20000) -> float:
    """The fraction of the noise-free outer ring (radius 2) that the run's last model calls inner."""
    from nodex.api import load

    model, _ = load(run_dir, which="last")
    return float((predicted_class(model, circle(OUTER_RADIUS, n)) == INNER).float().mean())


PROBES: dict[str, tuple[str, Callable[[Path], float]]] = {
    "annuli_*": ("outer_leak", outer_leak),
}


def probe(run_dir: Path, name: str, fn: Callable[[Path], float]) -> Optional[float]:
    """``name`` of the run in ``run_dir``: read from ``probes.json`` or measured and saved there;
    ``None`` when the run has no checkpoint to measure (the reason goes to ``probes.json``)."""
    path = Path(run_dir) / PROBE_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if isinstance(saved.get(name), (int, float)):
        return float(saved[name])
    try:
        saved[name] = fn(Path(run_dir))
    except Exception as exc:  # a run without a usable checkpoint: reported, never fatal
        saved[name] = None
        saved[f"{name}_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    path.write_text(json.dumps(saved, indent=1))
    return saved[name]
