"""What the benchmark scripts in ``scripts/bench/`` share: the import path, configs and models built
through nodex's public ``compose``, one training batch, a step-only trainer, timing, and the plain
(hand-written) twin of an MLP field that the torchdiffeq and torchdyn comparisons run.

Importing this module puts the repository root on ``sys.path`` (so the scripts run from a checkout
without an install, e.g. ``scripts/gpu_check.sh`` with the machine's own python) and, when it exists,
``.bench-site/`` (torchdyn 1.0.6 and its modules, from ``bash scripts/install_bench_deps.sh``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if (ROOT / ".bench-site").is_dir() and str(ROOT / ".bench-site") not in sys.path:
    sys.path.append(str(ROOT / ".bench-site"))

import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torch import nn  # noqa: E402

import nodex  # noqa: E402
from nodex.models.fields import MLPField  # noqa: E402
from nodex.models.layers import DepthConcatLinear  # noqa: E402
from nodex.train.loop import Trainer  # noqa: E402
from nodex.train.members import Member, Members  # noqa: E402
from nodex.train.setup import Pipeline  # noqa: E402


def compose(overrides: Sequence[str], *, device: str | None = "cpu", first: Sequence[str] = ()) -> DictConfig:
    """The config ``nodex train [first] [overrides] trainer.device=DEVICE`` runs (``device=None``: no device key)."""
    return nodex.compose([*first, *overrides, *([f"trainer.device={device}"] if device else [])])


def pipeline(cfg: DictConfig) -> Pipeline:
    """Data, task and model of ``cfg``, seeded from ``cfg.seed`` as ``nodex train`` seeds them."""
    torch.manual_seed(int(cfg.seed))
    return Pipeline(cfg)


def one_batch(pipe: Pipeline, cfg: DictConfig, default: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch ``(X (B, ...), y (B, ...))`` of ``trainer.batch_size`` samples (else ``default``, else
    ``data.n_train``): a fresh sample where the dataset has a sampler, else the head of the training split."""
    size = cfg.trainer.batch_size or default or cfg.data.n_train
    X, y = pipe.data.sampler(size) if pipe.data.sampler else pipe.data.train
    if cfg.trainer.batch_size and X.shape[0] > cfg.trainer.batch_size:
        X, y = X[: cfg.trainer.batch_size], y[: cfg.trainer.batch_size]
    return X, y


def step_trainer(built: Pipeline | Member, cfg: DictConfig) -> Trainer:
    """A one-member :class:`Trainer` of ``built``'s model, task and data with no run directory (only
    ``train_step`` is used)."""
    members = Members.single(built.model, built.task, built.data)
    return Trainer(members, cfg.trainer, built.model.settings.describe())


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """``(wall ms, process-CPU ms)`` per call of ``fn``, over ``repeats`` calls (CPU time is the steadier
    measure on a shared machine: a descheduled process accrues none)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - start) / repeats, 1000 * (time.process_time() - start_cpu) / repeats


class PlainField(nn.Module):
    """The MLP field as a bare ``f(t, z)``: Linear layers, depth concatenated by ``torch.cat``."""

    def __init__(self, field: MLPField) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        self.concat = []
        for layer in field.layers:
            lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            lin.load_state_dict(layer.state_dict())
            self.layers.append(lin)
            self.concat.append(isinstance(layer, DepthConcatLinear))
        self.act = type(field.acts[0]) if len(field.acts) else nn.Identity
        self.acts = nn.ModuleList(self.act() for _ in range(len(self.layers) - 1))
        self.nfe = 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``z (B, d)`` -> ``dz/dt (B, d)``."""
        self.nfe += 1
        h = z
        for i, lin in enumerate(self.layers):
            if self.concat[i]:
                h = torch.cat([h, t.expand(h.shape[0], 1)], 1)
            h = lin(h)
            if i < len(self.acts):
                h = self.acts[i](h)
        return h

    def sequential(self) -> nn.Sequential:
        """The same layers as one ``nn.Sequential`` (what torchdyn's ``NeuralODE`` takes; ``depth: none`` only)."""
        pairs = zip(self.layers, [*self.acts, None])
        return nn.Sequential(*[m for pair in pairs for m in pair if m is not None])


def plain_supported(pipe: Pipeline, X: torch.Tensor) -> bool:
    """True when :class:`PlainField` reproduces the model's field exactly (a first-order MLP
    field with ``depth: none | concat``, no control, horizon or integral loss)."""
    model = pipe.model
    slots = ("control", "horizon", "integral_loss")
    if not isinstance(model.field, MLPField) or any(getattr(model, k, None) is not None for k in slots):
        return False
    try:
        plain = PlainField(model.field)
        with torch.no_grad():
            z = model.input_layer(X[:8])
            t = torch.tensor(0.3)
            return bool(torch.allclose(plain(t, z), model.field(t, z, None)))
    except (RuntimeError, TypeError, AttributeError):
        return False


def torchdyn_twin(pipe: Pipeline, X: torch.Tensor, disabled: bool = False) -> bool:
    """True when torchdyn is importable, not ``disabled``, and the model's field has a plain ``depth: none``
    twin (only a plain MLP field has ``.layers``, so :func:`plain_supported` is asked first)."""
    try:
        import torchdyn  # noqa: F401
    except ImportError:
        return False
    return (not disabled and plain_supported(pipe, X)
            and not any(isinstance(layer, DepthConcatLinear) for layer in pipe.model.field.layers))
