"""Time to 100% train accuracy on the default annuli experiment: nodex's recipe vs torchdyn's.

    python scripts/bench/bench_time_to_accuracy.py [--seeds 0,1,2] [--max-steps 600] [--target 1.0] [NODEX OVERRIDES]

Both train the default model (``nodex train``: vanilla NODE, field 2-32-32-2 tanh with the last
layer zero-initialised, linear readout, cross-entropy) from the *same initial weights* on the
*same stream* of fresh 1024-point annuli batches, and every 10 steps check the accuracy on a
fixed training set of 1024 points (the check is not timed). Reported: the training CPU time and
steps until that accuracy first reaches 100% (``--target``).

- nodex: its default recipe (``configs/``: dopri5 rtol = atol = 1e-4, backprop, Adam 5e-3),
  through the real ``Trainer.train_step``.
- torchdyn 1.0.6: its defaults (``NeuralODE(f)``: tsit5, rtol = atol = 1e-3, backprop) with the
  Adam(lr=0.01) of its quickstart. Needs ``bash scripts/install_bench_deps.sh``.

Runs alternate between the two per seed, in one process; CPU time (steadier than wall time on a
shared machine) of the training steps only.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import common
import torch
from common import PlainField, step_trainer
from torch import nn

from nodex.train.setup import Pipeline, build_optimizer


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def run_nodex(pipe: Pipeline, cfg, batches, X_fix, y_fix, target: float) -> tuple[float | None, int | None]:
    trainer = step_trainer(pipe, cfg)
    opt = build_optimizer(cfg.trainer, pipe.model, 1)[0]
    spent = 0.0
    for step, (X, y) in enumerate(batches, 1):
        start = time.process_time()
        pipe.model.train()
        trainer.train_step(X, y, opt)
        spent += time.process_time() - start
        if step % 10 == 0:
            pipe.model.eval()
            with torch.no_grad():
                if accuracy(pipe.model(X_fix).y_hat, y_fix) >= target:
                    return spent, step
    return None, None


def run_torchdyn(pipe: Pipeline, batches, X_fix, y_fix, target: float) -> tuple[float | None, int | None]:
    from torchdyn.core import NeuralODE

    net = PlainField(pipe.model.field).sequential()  # the default field: Linear layers and tanh
    node = NeuralODE(net)  # torchdyn's defaults: tsit5, atol = rtol = 1e-3, autograd
    readout = copy.deepcopy(pipe.model.readout)
    opt = torch.optim.Adam([*node.parameters(), *readout.parameters()], lr=0.01)
    t_span = torch.linspace(0, 1, 2)
    loss_fn = nn.CrossEntropyLoss()
    spent = 0.0
    for step, (X, y) in enumerate(batches, 1):
        start = time.process_time()
        _, sol = node(X, t_span)
        loss = loss_fn(readout(sol[-1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        spent += time.process_time() - start
        if step % 10 == 0:
            with torch.no_grad():
                if accuracy(readout(node(X_fix, t_span)[1][-1]), y_fix) >= target:
                    return spent, step
    return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--target", type=float, default=1.0, help="train accuracy to reach (default: 100%%)")
    parser.add_argument("--no-torchdyn", action="store_true")
    parser.add_argument("overrides", nargs="*",
                        help="for nodex's config (e.g. trainer.optim.lr=0.01 to try another recipe)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list] = {"nodex": [], "torchdyn": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = common.compose([*args.overrides, f"seed={seed}"])
        pipe = common.pipeline(cfg)
        gen_state = torch.get_rng_state()
        batches = [pipe.data.sampler(1024) for _ in range(args.max_steps)]
        torch.set_rng_state(gen_state)
        X_fix, y_fix = pipe.data.sampler(1024)
        initial = copy.deepcopy(pipe.model.state_dict())
        pipe.model.load_state_dict(initial)
        dyn = (None, None) if args.no_torchdyn else run_torchdyn(pipe, batches, X_fix, y_fix, args.target)
        pipe.model.load_state_dict(initial)
        ours = run_nodex(pipe, cfg, batches, X_fix, y_fix, args.target)
        results["nodex"].append(ours)
        results["torchdyn"].append(dyn)
        print(f"seed {seed}: nodex {ours}, torchdyn {dyn}", flush=True)
    print(f"| recipe | CPU s to {args.target:.0%} train acc (per seed) | steps | median s |  "
          f"(max {args.max_steps} steps, threads {args.threads})")
    print("|---|---|---|---|")
    print(f"nodex overrides: {' '.join(args.overrides) or '(defaults)'}")
    for name, rows in results.items():
        secs = [r[0] for r in rows]
        done = [s for s in secs if s is not None]
        med = f"{statistics.median(done):.1f}" if len(done) == len(secs) else "not reached by all"
        times = ", ".join("—" if s is None else f"{s:.1f}" for s in secs)
        steps = ", ".join("—" if r[1] is None else str(r[1]) for r in rows)
        print(f"| {name} | {times} | {steps} | {med} |")


if __name__ == "__main__":
    main()
