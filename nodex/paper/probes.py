"""Measurements a claim needs that a run's metrics do not hold, from the run's saved model and its test data
(rebuilt from its config), cached in ``RUN_DIR/probes.json`` and read as ``probe/NAME``: ``outer_leak_200k``
(annuli: the share of 200,000 points on the noise-free outer circle called inner), ``monotone_floor``
(reflection: the least test MSE of an order-preserving 1-D map, by isotonic regression), ``mean_abs_depth``
(adaptive depth: mean |S(x)| on the test inputs), ``cnf_nll_worst`` / ``cnf_swap_gap`` (conditional CNF: the
worse own-condition test NLL; the smaller NLL increase when told the other condition). Why each matters:
the claims' notes (:mod:`nodex.paper.claims`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional, Union

import torch

PROBE_FILE = "probes.json"
INNER, OUTER_RADIUS = 1, 2.0  # the rings data: label 1 on radius 1, label 0 on radius 2
ProbeFn = Callable[[Path], Union[float, dict[str, float]]]


def circle(radius: float, n: int) -> torch.Tensor:
    """``n`` points evenly spaced on the circle of ``radius``, ``(n, 2)``."""
    angle = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1).float()


@torch.no_grad()
def predicted_class(model: torch.nn.Module, x: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """The class a trained classifier gives each row of ``x`` ``(N, d)``: a scalar readout
    thresholded at 0.5 (the annuli's MSE readout), otherwise the argmax; ``(N,)``."""
    out = []
    for chunk in x.split(batch):
        y_hat = model(chunk).y_hat
        out.append((y_hat[:, 0] > 0.5).long() if y_hat.shape[1] == 1 else y_hat.argmax(dim=1))
    return torch.cat(out)


def outer_leak(run_dir: Path, n: int = 200_000) -> float:
    """The share of the noise-free outer ring (radius 2, ``n`` points) the run's last model calls inner."""
    from nodex.api import load

    model, _ = load(run_dir, which="last")
    return float((predicted_class(model, circle(OUTER_RADIUS, n)) == INNER).float().mean())


def isotonic_floor(x: torch.Tensor, y: torch.Tensor) -> float:
    """The least mean squared error of a non-decreasing map ``x -> y`` (``(N,)`` each): the
    isotonic regression by pool-adjacent-violators; equal ``x`` must map to one value."""
    order = torch.argsort(x, stable=True)
    xs, ys = x[order].tolist(), y[order].tolist()
    blocks: list[list[float]] = []  # [sum, count] of pooled targets, means non-decreasing
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        if i and xi == xs[i - 1]:
            blocks[-1][0] += yi
            blocks[-1][1] += 1
        else:
            blocks.append([yi, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    total = sum(v * v for v in ys) - sum(s * s / c for s, c in blocks)
    return max(total, 0.0) / len(ys)


def _test_split(run_dir: Path) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The run's last model and its test ``(X, y)``, rebuilt from the run's config."""
    from nodex.api import load
    from nodex.data import build_data

    model, cfg = load(run_dir, which="last")
    X, y = build_data(cfg.data, int(cfg.seed), "cpu").test
    return model, X, y


def monotone_floor(run_dir: Path) -> float:
    """The best test MSE an order-preserving 1-D map reaches on the run's test set."""
    _, X, y = _test_split(run_dir)
    return isotonic_floor(X.reshape(-1), y.reshape(-1))


@torch.no_grad()
def mean_abs_depth(run_dir: Path) -> float:
    """The mean |S(x)| of the run's learned horizon over its test inputs."""
    model, X, _ = _test_split(run_dir)
    if getattr(model, "horizon", None) is None:
        raise ValueError("the model has no learned horizon (model.horizon)")
    return float(model.horizon(X).abs().mean())


@torch.no_grad()
def cnf_condition_nll(run_dir: Path) -> dict[str, float]:
    """``cnf_nll_worst``: the larger of the two conditions' test NLL under their own condition;
    ``cnf_swap_gap``: the smaller, over the conditions, of (NLL told the other condition − own NLL)."""
    model, X, _ = _test_split(run_dir)
    own, gap = [], []
    for k in (0, 1):
        rows = X[X[:, -1].round() == k]
        swapped = torch.cat([rows[:, :-1], torch.full_like(rows[:, -1:], 1 - k)], dim=1)
        nll_own, nll_swapped = (-float(model.log_prob(r).mean()) for r in (rows, swapped))
        own.append(nll_own)
        gap.append(nll_swapped - nll_own)
    return {"cnf_nll_worst": max(own), "cnf_swap_gap": min(gap)}


# experiment pattern -> the probes its runs get (name, function; a function may measure several)
PROBES: dict[str, tuple[tuple[str, ProbeFn], ...]] = {
    "annuli_*": (("outer_leak_200k", outer_leak),),
    "reflection_vanilla": (("monotone_floor", monotone_floor),),
    "reflection_depthcat": (("monotone_floor", monotone_floor),),
    "reflection_adaptive_depth": (("mean_abs_depth", mean_abs_depth),),
    "cnf_conditional": (("cnf_nll_worst", cnf_condition_nll), ("cnf_swap_gap", cnf_condition_nll)),
}


def probe(run_dir: Path, name: str, fn: ProbeFn) -> Optional[float]:
    """``name`` of the run in ``run_dir``: read from ``probes.json`` or measured and saved there (a
    function that returns several values saves them all); ``None`` when the run has no checkpoint
    to measure (the reason goes to ``probes.json``)."""
    path = Path(run_dir) / PROBE_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if isinstance(saved.get(name), (int, float)):
        return float(saved[name])
    try:
        got = fn(Path(run_dir))
        saved.update(got if isinstance(got, dict) else {name: float(got)})
    except Exception as exc:  # a run without a usable checkpoint: reported, never fatal
        saved[name] = None
        saved[f"{name}_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    path.write_text(json.dumps(saved, indent=1))
    return saved.get(name)
