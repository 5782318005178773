"""Throughput of a seed ensemble (``trainer.ensemble=K``) vs K separate runs, side by side.

One sample = one training step of every member (forward solve, backward, optimizer step):
the K separate models each through :meth:`nodex.train.loop.Trainer.train_step` of a one-member
trainer, and the stacked :class:`~nodex.models.ensemble.EnsembleNeuralODE` through the same
method of a trainer of :class:`~nodex.train.members.StackedMembers` (what ``trainer.ensemble=K``
runs). They take turns round by round (the order rotates every round) in one process; medians
over rounds, min-max beside them. Wall time and process CPU time are both reported: on a shared
machine the CPU time is the steadier measure of the work done (a descheduled process accrues none).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/bench_ensemble.py                # K=8, batch 64 and 1024, rk4
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/bench_ensemble.py --batches 64 --rounds 30 model=depthcat

For MLP fields with a batched form (:mod:`nodex.models.ensemble.batched`) the ensemble is also
timed with every slot under ``vmap`` (the general path), in the same rounds (``--no-vmap``: not).

Trailing ``key=value`` arguments are config overrides (default: the paper's small toy model,
vanilla MLP 2-32-32-2 on rings, solver=rk4 with 10 steps).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import common
import torch
from common import step_trainer, timed
from omegaconf import OmegaConf

from nodex.models import count_parameters
from nodex.models.ensemble import EnsembleNeuralODE
from nodex.train.loop import Trainer
from nodex.train.members import Member, StackedMembers
from nodex.train.setup import Pipeline, build_optimizer


def build(overrides: list[str], K: int) -> tuple:
    """The composed config and ``K`` members with seeds ``seed..seed+K-1``."""
    cfg = common.compose(["trainer.device=cpu", *overrides], device=None, first=["solver=rk4"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    members = []
    for k in range(K):
        mcfg = OmegaConf.create(resolved)
        mcfg.seed = int(cfg.seed) + k
        pipe = Pipeline(mcfg)
        members.append(Member(k, pipe.model, pipe.task, pipe.data, mcfg))
    return cfg, members


def batches(members: list[Member], B: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for m in members:
        data = m.data
        X, y = data.sampler(B) if data.sampler is not None else (data.train[0][:B], data.train[1][:B])
        out.append((X.contiguous(), y.contiguous()))
    return out


def step_runners(cfg, members: list[Member], B: int, vmap: bool) -> list[tuple[str, Callable[[], None]]]:
    """(name, one training step) of the K separate runs, of the ensemble and, with ``vmap``, of the ensemble
    with every slot under vmap; each on its own batch of ``B`` samples per member."""
    settings = members[0].model.settings
    data = batches(members, B)
    separate = []
    for m in members:
        opt, _ = build_optimizer(cfg.trainer, m.model, 1)
        separate.append((step_trainer(m, cfg), opt))
    stacked = StackedMembers(members)
    ens = stacked.model
    fit = Trainer(stacked, cfg.trainer, settings.describe())
    ens_opt, _ = build_optimizer(cfg.trainer, ens, 1)
    X, Y = torch.stack([d[0] for d in data]), torch.stack([d[1] for d in data])

    def run_separate() -> None:
        for (trainer, opt), (x, y) in zip(separate, data):
            trainer.train_step(x, y, opt)

    def run_ensemble(batched: bool = True) -> None:
        ens.use_batched_field = batched
        fit.train_step(X, Y, ens_opt, 0)

    runners = [("separate", run_separate), ("ensemble", run_ensemble)]
    if vmap:
        runners.append(("vmap", lambda: run_ensemble(False)))
    return runners


def rotate(runners: list[tuple[str, Callable[[], None]]], rounds: int, steps: int) -> tuple[dict, dict]:
    """One warm-up step each, then ``rounds`` rounds of ``steps`` steps each, the order rotating every round;
    -> (wall ms per step, CPU ms per step): name -> one value per round."""
    times: dict[str, list[float]] = {name: [] for name, _ in runners}
    cpu: dict[str, list[float]] = {name: [] for name, _ in runners}
    for name, fn in runners:  # warm-up
        fn()
    for r in range(rounds):
        for name, fn in runners[r % len(runners):] + runners[: r % len(runners)]:  # the order rotates
            wall_ms, cpu_ms = timed(fn, steps)
            times[name].append(wall_ms)
            cpu[name].append(cpu_ms)
    return times, cpu


def row(B: int, times: dict[str, list[float]], cpu: dict[str, list[float]], vmap: bool) -> str:
    """The table row of batch ``B``: medians (min-max) and speed-ups of the ensemble over the separate runs."""
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    span = {k: f"{min(v):.1f}-{max(v):.1f}" for k, v in times.items()}
    vmap_cells = f" {med['vmap']:.1f} ({span['vmap']}) | {med['separate'] / med['vmap']:.2f}x |" if vmap else ""
    speed_up, cpu_speed_up = med["separate"] / med["ensemble"], med_cpu["separate"] / med_cpu["ensemble"]
    return (f"| {B} | {med['separate']:.1f} ({span['separate']}) | {med['ensemble']:.1f} ({span['ensemble']}) | "
            f"**{speed_up:.2f}x** | {cpu_speed_up:.2f}x |{vmap_cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--batches", default="64,1024", help="comma-separated batch sizes")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (medians over them)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-vmap", action="store_true",
                        help="skip the ensemble with every slot under vmap (the general path)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    K = args.members
    cfg, members = build(args.overrides, K)
    settings = members[0].model.settings
    has_batched = EnsembleNeuralODE([m.model for m in members[:2]]).has_batched_field
    both = has_batched and not args.no_vmap
    path = "batched MLP field" if has_batched else "vmap (no batched form of this field)"
    print(f"# {cfg.model.name}, {count_parameters(members[0].model)} params, {cfg.data.name}, {settings.describe()}, "
          f"K={K}, ensemble: {path}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    extra = " ensemble, vmap only: wall ms (min-max) | speed-up vmap only (wall) |" if both else ""
    print("| batch | K separate runs: wall ms per step of all K (min-max) | ensemble: wall ms per step (min-max) "
          f"| speed-up (wall) | speed-up (CPU time) |{extra}")
    print("|---|---|---|---|---|" + ("---|---|" if both else ""))
    for B in [int(b) for b in args.batches.split(",")]:
        runners = step_runners(cfg, members, B, both)
        times, cpu = rotate(runners, args.rounds, args.steps)
        print(row(B, times, cpu, both), flush=True)

if __name__ == "__main__":
    main()
