"""The random streams a training run draws from besides its batch streams: the generators a model owns (STEER's end
depths), rewound with a step stopped by Ctrl-C, and the global RNG, which evaluations (validation, figures) leave
where they found it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def model_generators(model: nn.Module) -> list[torch.Generator]:
    """The random streams a model owns (a module's ``generator``, e.g. STEER's end depths), in module order."""
    return [g for mod in model.modules() if isinstance(g := getattr(mod, "generator", None), torch.Generator)]


@contextmanager
def training_streams_kept() -> Iterator[None]:
    """Run an evaluation (validation, figures) without moving the global RNG the training draws from: a stochastic
    evaluation (a CNF's Hutchinson trace) would otherwise make training depend on ``val_every`` and ``plots``, and a
    resumed run differ from the uninterrupted one."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
