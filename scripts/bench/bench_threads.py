"""Training-step time with 1 thread vs all usable threads, beside a competing process (``trainer.num_threads``).

A busy-looping process takes one core for the whole measurement (``--competitors N``: N of them); the two thread
counts take turns round by round in one process (order rotating), medians over rounds. It also prints what
``trainer.num_threads=auto`` chooses at the end (after the competitors have raised the load average).

    .venv/bin/python scripts/bench/bench_threads.py                         # a wide field: hidden [256,256], batch 1024
    .venv/bin/python scripts/bench/bench_threads.py --competitors 0         # the same on an otherwise idle machine

Trailing ``key=value`` arguments are config overrides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import common
import torch

from nodex.train.setup import Pipeline, build_optimizer
from nodex.train.threads import choose_threads, usable_cpus

DEFAULT = ["model.field.hidden=[256,256]", "data.n_train=1024", "data.n_val=8", "data.n_test=8", "solver=rk4",
           "trainer.device=cpu"]


def step_time(pipe: Pipeline, optimizer: torch.optim.Optimizer, X: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seconds per training step (forward solve, loss, backward, update), over ``steps`` steps."""
    started = time.perf_counter()
    for _ in range(steps):
        loss, _ = pipe.task.loss(pipe.model(X), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--competitors", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    args, overrides = parser.parse_known_args()
    cfg = common.compose([*DEFAULT, *overrides], device=None)
    pipe = common.pipeline(cfg)
    optimizer, _ = build_optimizer(cfg.trainer, pipe.model, 1)
    X, y = pipe.data.train
    most = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.competitors)]
    try:
        times: dict[int, list[float]] = {1: [], most: []}
        for r in range(args.rounds):
            for threads in ([1, most] if r % 2 == 0 else [most, 1]):
                torch.set_num_threads(threads)
                times[threads].append(step_time(pipe, optimizer, X, y, args.steps))
        load = os.getloadavg()[0]
        torch.set_num_threads(most)
        chosen = choose_threads("auto", pipe.model, X, X.shape[0])
    finally:
        for b in burners:
            b.kill()
    print(f"competing processes: {args.competitors}, CPUs: {most}, 1-min load at the end: {load:.2f}, "
          f"usable: {usable_cpus(load=load)}")
    for threads, values in times.items():
        print(f"threads={threads}: {1000 * statistics.median(values):.1f} ms/step "
              f"(min {1000 * min(values):.1f}, max {1000 * max(values):.1f})")
    ratio = statistics.median(times[most]) / statistics.median(times[1])
    print(f"step time {most} threads / 1 thread: {ratio:.2f}; auto chose {chosen} thread(s)")


if __name__ == "__main__":
    main()
