"""Torch intra-op thread count per job: ``trainer.num_threads = auto | N``.

Measured on the 2-core development machine (CPU, torch 2.13): a second thread only pays off
when one field evaluation is large (MLP width >= 256 or batch >= 4096, i.e. roughly 8 MFLOP
per evaluation); below that it adds synchronisation and takes a core from parallel jobs.
``auto`` therefore counts the FLOPs of one forward solve on a small batch and picks 1 thread
below the threshold, torch's default above it.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from nodex.errors import ConfigError

FLOPS_PER_EVAL_FOR_MORE_THREADS = 8e6


def flops_per_evaluation(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> float:
    """FLOPs of one field evaluation at ``batch_size`` (one forward solve on ``x[:8]``, divided
    by its NFE and scaled to the batch)."""
    probe = x[:8]
    model.nfe.reset()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(probe)
    evals = max(1, model.nfe.count)
    model.nfe.reset()
    return counter.get_total_flops() / evals / probe.shape[0] * batch_size


def choose_threads(setting: str | int | None, model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> int:
    """Set and return torch's intra-op thread count for ``setting`` (``auto``, an int, or
    ``None`` for torch's default)."""
    default = torch.get_num_threads()
    if setting is None:
        return default
    if setting == "auto":
        if x.device.type != "cpu":
            return default
        try:
            flops = flops_per_evaluation(model, x, batch_size)
        except Exception:  # a model whose forward needs gradients (e.g. exact CNF traces): keep the default
            return default
        threads = 1 if flops < FLOPS_PER_EVAL_FOR_MORE_THREADS else default
    else:
        try:
            threads = int(setting)
        except (TypeError, ValueError):
            threads = 0
        if threads <= 0:
            raise ConfigError(f"trainer.num_threads={setting!r} must be auto, null or a positive integer")
    torch.set_num_threads(threads)
    return threads
