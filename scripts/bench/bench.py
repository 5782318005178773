"""Benchmark nodex's training step against the same step written by hand, in one process.

    python scripts/bench/bench.py [HYDRA OVERRIDES...] [--steps 20] [--rounds 7] [--threads 1]
    python scripts/bench/bench.py --suite paper [--pretrain N] ...

Runs nodex's real ``Trainer.train_step`` for the composed config and, interleaved round-robin
on the same batch from the same initial weights, (a) the same nodex model on torchdiffeq's
solvers (``solver.engine=torchdiffeq``), (b) where the field is a plain MLP (``depth: none |
concat``, first order, no control or horizon), the same model written as a plain
``torchdiffeq.odeint`` loop, (c) for ``solver=rk4`` a hand-written RK4 loop and (d) torchdyn's
``NeuralODE`` (``depth: none``) when it is installed (``bash scripts/install_bench_deps.sh``).
``--pretrain N`` first trains nodex N steps so all start from *trained* weights (adaptive NFE
grows). Prints median wall and process-CPU ms/step (min–max over rounds; CPU time is steadier
on a shared machine), forward/backward NFE, samples/s and the ratio to the torchdiffeq baseline
(plain torchdiffeq where it exists, else nodex on torchdiffeq) as a Markdown table.
``--suite paper`` does this for the paper's model variants at their experiment sizes.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics

import common
import torch
from common import PlainField, one_batch, pipeline, plain_supported, step_trainer, timed, torchdyn_twin
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from nodex.models import ModelOutput
from nodex.train.setup import Pipeline, build_optimizer


def rk4(func, z, t0: float, t1: float, h: float):
    """Classic RK4 with stage times t, t+h/2, t+h/2, t+h (hand-written reference)."""
    n = round((t1 - t0) / h)
    t = torch.tensor(t0)
    for _ in range(n):
        k1 = func(t, z)
        k2 = func(t + h / 2, z + h / 2 * k1)
        k3 = func(t + h / 2, z + h / 2 * k2)
        k4 = func(t + h, z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t = t + h
    return z


class PlainStep:
    """One training step of the hand-written model: solve, readout, the task's loss, Adam."""

    def __init__(self, pipe: Pipeline, cfg, kind: str) -> None:
        self.field = PlainField(pipe.model.field)
        self.input_layer = copy.deepcopy(pipe.model.input_layer)
        self.readout = copy.deepcopy(pipe.model.readout)
        self.kind, self.settings, self.task = kind, pipe.settings, pipe.task
        params = [*self.input_layer.parameters(), *self.field.parameters(), *self.readout.parameters()]
        self.opt = build_optimizer(cfg.trainer, nn.ParameterList(params), 1)[0]
        self.S = pipe.model.S  # the horizon is the model's (model.horizon.S)
        self.t = torch.tensor([0.0, self.S])

    def __call__(self, X, y):
        s = self.settings
        self.field.nfe = 0
        X = self.input_layer(X)
        if self.kind == "hand":
            z = rk4(self.field, X, 0.0, self.S, s.step_size)
        else:
            opts = {"step_size": s.step_size} if s.is_fixed_step else {}
            if s.sensitivity == "adjoint":
                ad_opts = {**opts, "norm": "seminorm"} if s.seminorm else opts
                z = odeint_adjoint(self.field, X, self.t, rtol=s.rtol, atol=s.atol, method=s.method, options=opts,
                                   adjoint_options=ad_opts)[-1]
            else:
                z = odeint(self.field, X, self.t, rtol=s.rtol, atol=s.atol, method=s.method, options=opts)[-1]
        nfe_f = self.field.nfe
        loss, _ = self.task.loss(ModelOutput(self.readout(z), z), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return nfe_f, self.field.nfe - nfe_f


class TorchdynStep(PlainStep):
    """The same model as torchdyn 1.0.6's ``NeuralODE`` (its own solvers and adjoint)."""

    def __init__(self, pipe: Pipeline, cfg) -> None:
        super().__init__(pipe, cfg, "torchdyn")
        from torchdyn.core import NeuralODE

        s = pipe.settings
        if not (all(not c for c in self.field.concat)):
            raise SystemExit("torchdyn comparison supports depth: none fields only")
        sensitivity = "adjoint" if s.sensitivity == "adjoint" else "autograd"
        self.node = NeuralODE(self.field.sequential(), solver=s.method, sensitivity=sensitivity, atol=s.atol,
                              rtol=s.rtol, atol_adjoint=s.atol, rtol_adjoint=s.rtol, seminorm=s.seminorm)
        params = [*self.input_layer.parameters(), *self.node.parameters(), *self.readout.parameters()]
        self.opt = build_optimizer(cfg.trainer, nn.ParameterList(params), 1)[0]
        points = round(self.S / s.step_size) + 1 if s.is_fixed_step else 2
        self.t_span = torch.linspace(0, self.S, points)

    def __call__(self, X, y):
        self.node.vf.nfe = 0
        _, sol = self.node(self.input_layer(X), self.t_span)
        z = sol[-1]
        nfe_f = int(self.node.vf.nfe)
        loss, _ = self.task.loss(ModelOutput(self.readout(z), z), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return nfe_f, int(self.node.vf.nfe) - nfe_f


def interleave(names: list[str], fresh, X: torch.Tensor, y: torch.Tensor, args) -> tuple[dict, dict, dict]:
    """``args.warmup`` steps of each implementation, then ``args.rounds`` rounds of ``args.steps`` steps of each
    in turn, each round from ``fresh(name)``; -> (wall ms per step, CPU ms per step: name -> one value per round;
    name -> (forward, backward) NFE of the last step)."""
    times: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    nfe = {k: (0, 0) for k in names}
    for name in names:
        fn = fresh(name)
        for _ in range(args.warmup):
            fn(X, y)
    for _ in range(args.rounds):
        for name in names:
            fn = fresh(name)

            def step(fn=fn, name=name) -> None:
                nfe[name] = fn(X, y)

            wall_ms, cpu_ms = timed(step, args.steps)
            times[name].append(wall_ms)
            cpu[name].append(cpu_ms)
    return times, cpu, nfe


def bench(overrides: list[str], args) -> tuple[str, list[tuple]]:
    """Time every applicable implementation of one training step; -> (header, rows)."""
    cfg = common.compose(overrides)
    pipe = pipeline(cfg)
    X, y = one_batch(pipe, cfg)
    trainer = step_trainer(pipe, cfg)
    own = pipe.model.settings

    def make_nodex(engine: str = own.engine):
        opt = build_optimizer(cfg.trainer, pipe.model, 1)[0]
        settings = dataclasses.replace(own, engine=engine)

        def step(Xb, yb):
            pipe.model.settings = settings
            _, _, _, f, b = trainer.train_step(Xb, yb, opt)
            return f, b

        return step

    warm = make_nodex()
    for _ in range(args.pretrain):
        Xp, yp = pipe.data.sampler(X.shape[0]) if pipe.data.sampler else (X, y)
        warm(Xp, yp)
    reference = copy.deepcopy(pipe.model.state_dict())
    factories = {"nodex": make_nodex, "nodex on torchdiffeq": lambda: make_nodex("torchdiffeq")}
    plain = plain_supported(pipe, X)
    if plain:
        factories["torchdiffeq"] = lambda: PlainStep(pipe, cfg, "plain")
        if pipe.settings.method == "rk4":
            factories["hand-written rk4"] = lambda: PlainStep(pipe, cfg, "hand")
    if torchdyn_twin(pipe, X, disabled=args.no_torchdyn):
        factories["torchdyn 1.0.6"] = lambda: TorchdynStep(pipe, cfg)

    def fresh(name):
        """Every implementation starts each round from the same weights and a new optimizer,
        so all of them follow the same training trajectory (same NFE) within a round."""
        pipe.model.load_state_dict(reference)
        return factories[name]()

    times, cpu, nfe = interleave(list(factories), fresh, X, y, args)
    pipe.model.settings = own
    base_name = "torchdiffeq" if "torchdiffeq" in factories else "nodex on torchdiffeq"
    base, base_cpu = statistics.median(times[base_name]), statistics.median(cpu[base_name])
    weights = f"trained {args.pretrain} steps" if args.pretrain else "fresh"
    header = (
        f"config: {' '.join(overrides) or '(default)'} | {pipe.settings.describe()} {pipe.settings.sensitivity} "
        f"| batch {X.shape[0]} | threads {args.threads} | {args.rounds}x{args.steps} steps | weights: {weights}"
    )
    rows = []
    for name in factories:
        med, med_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        rows.append((name, med, min(times[name]), max(times[name]), med_cpu, *nfe[name], X.shape[0] * 1000 / med,
                     med / base, med_cpu / base_cpu, base_name))
    return header, rows


# The paper's model variants at their experiment sizes (configs/experiment/), one row group each.
PAPER_SUITE = [
    ("vanilla (annuli, adjoint)", ["experiment=annuli_vanilla"]),
    ("vanilla (annuli, autograd)", ["experiment=annuli_vanilla", "solver.sensitivity=autograd"]),
    ("depth-concat", ["experiment=annuli_depthcat"]),
    ("Galërkin (fourier)", ["experiment=annuli_galnode"]),
    ("stacked (jump_t)", ["experiment=stacked_moons"]),
    ("zero-augmented (ANODE)", ["experiment=spheres_augmentation_anode"]),
    ("input-layer augmented (IL-NODE)", ["experiment=spheres_augmentation_ilnode"]),
    ("second-order", ["experiment=spheres_augmentation_second_order"]),
    ("data-controlled", ["experiment=annuli_data_control"]),
    ("adaptive-depth", ["experiment=reflection_adaptive_depth"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--suite", choices=["paper"],
                        help="benchmark the paper's model variants (overrides apply to each)")
    parser.add_argument("--steps", type=int, default=20, help="steps per round and implementation")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pretrain", type=int, default=0, help="train nodex this many steps first (trained weights)")
    parser.add_argument("--no-torchdyn", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.suite == "paper":
        weights = f"trained {args.pretrain} steps" if args.pretrain else "fresh"
        print(f"suite: paper | threads {args.threads} | {args.rounds}x{args.steps} steps | weights: {weights}")
        print("| variant | solver | implementation | ms/step | CPU ms/step | NFE fwd | NFE bwd | ratio (CPU) | vs |")
        print("|---|---|---|---|---|---|---|---|---|")
        for label, overrides in PAPER_SUITE:
            header, rows = bench([*overrides, *args.overrides], args)
            solver = header.split(" | ")[1]
            for name, med, _, _, med_cpu, nf, nb, _, _, r_cpu, base_name in rows:
                print(f"| {label} | {solver} | {name} | {med:.2f} | {med_cpu:.2f} | {nf} | {nb} | {r_cpu:.3f} "
                      f"| {base_name} |", flush=True)
        return
    header, rows = bench(args.overrides, args)
    print(header)
    print("| implementation | ms/step (median) | min–max | CPU ms/step | NFE fwd | NFE bwd | samples/s "
          "| ratio vs baseline (wall) | (CPU time) | baseline |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, med, lo, hi, med_cpu, nf, nb, sps, r, r_cpu, base_name in rows:
        print(f"| {name} | {med:.2f} | {lo:.2f}–{hi:.2f} | {med_cpu:.2f} | {nf} | {nb} | {sps:,.0f} | {r:.3f} "
              f"| {r_cpu:.3f} | {base_name} |")


if __name__ == "__main__":
    main()
