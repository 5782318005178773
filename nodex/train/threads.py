"""Torch intra-op thread count per job: ``trainer.num_threads = auto | N``.

A second thread pays off only when one field evaluation is large enough to split
(:data:`FLOPS_PER_EVAL_FOR_MORE_THREADS`, 8 MFLOP: an MLP of width 256 or a batch of 4096);
below that it adds synchronisation and takes a core from parallel jobs. The threshold depends on
the CPU: ``scripts/bench/bench_threads.py`` times both thread counts on yours.
``auto`` therefore counts the FLOPs of one forward solve on a small batch and picks 1 thread
below the threshold; above it, the CPUs this job may use: those its affinity mask and cgroup quota allow, shared
with the other workers of a local sweep, less those other processes keep busy (the load average) — never more
than torch's default, never oversubscribed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

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


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup quota allows (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), ``None`` if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus(workers: int = 1, *, load: float | None = None, quota: float | None = None) -> int:
    """CPUs one of ``workers`` parallel jobs may keep busy: the affinity mask, capped by the cgroup quota, less the
    load other processes put on it (``load``: default the 1-minute load average), split between the workers."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota() if quota is None else quota
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    idle = max(1, math.floor(cpus - load + 0.5))
    return max(1, idle // max(1, workers))


def choose_threads(
    setting: str | int | None, model: torch.nn.Module, x: torch.Tensor, batch_size: int, *, workers: int = 1
) -> int:
    """Set and return torch's intra-op thread count for ``setting`` (``auto``, an int, or ``None`` for torch's
    default); ``workers``: the jobs of a local sweep that run at once (``auto`` shares the CPUs with them)."""
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
        threads = 1 if flops < FLOPS_PER_EVAL_FOR_MORE_THREADS else min(default, usable_cpus(workers))
    else:
        try:
            threads = int(setting)
        except (TypeError, ValueError):
            threads = 0
        if threads <= 0:
            raise ConfigError(f"trainer.num_threads={setting!r} must be auto, null or a positive integer")
    torch.set_num_threads(threads)
    return threads
