"""Divergence caught where training logs: a non-finite loss or parameter, and a finite loss that exploded.

Adaptive solvers turn a diverging run into ``max_num_steps`` failures; a fixed-step solver (euler, midpoint, rk4)
keeps stepping, so a learning rate far too large trains on to a loss of 1e20 and "completes". A loss that rose to
more than :data:`BLOW_UP` times its first logged value (or times 1, for a first loss below 1 in magnitude: a
regression loss near 0 may grow a lot before it means anything, and a CNF's NLL may be negative) is a divergence.
"""

from __future__ import annotations

import math

from nodex.errors import DivergenceError
from nodex.train.members import Member

BLOW_UP = 1e6
FIX = "lower trainer.optim.lr or set trainer.grad_clip"


def check_parameters(m: Member, solver: str) -> None:
    """Raises DivergenceError: a parameter of member ``m`` is not finite."""
    import torch

    for p in m.model.parameters():
        if not torch.isfinite(p).all():
            raise DivergenceError(f"parameters became non-finite by step {m.state.step} with {solver}: {FIX}")


def check_logged(m: Member, values: dict[str, float], first: float | None, solver: str) -> None:
    """The window's mean training values of member ``m`` (``train/loss``, its parts): finite, and the loss not
    blown up against the loss of the first step this process trained (``first``: the window's first step's;
    the first window's is kept on ``m.first_loss``).

    Raises:
        DivergenceError: naming the values, the step, the solver and what to change.
    """
    bad = ", ".join(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        raise DivergenceError(f"{bad} became non-finite by step {m.state.step} with {solver}: lower "
                              "trainer.optim.lr, set trainer.grad_clip or tighten solver.rtol/atol")
    loss = values.get("train/loss")
    if m.first_loss is None and first is not None and math.isfinite(first):
        m.first_loss = first
    if loss is not None and m.first_loss is not None and abs(loss) > BLOW_UP * max(abs(m.first_loss), 1.0):
        raise DivergenceError(f"train/loss rose from {m.first_loss:.4g} to a mean of {loss:.4g} over the steps up to "
                              f"{m.state.step} with {solver}: the training diverges; {FIX}")
    check_parameters(m, solver)
