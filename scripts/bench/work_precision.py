"""Work–precision: gradient error vs CPU time for nodex and torchdyn, and the time ratio at equal error.

    OMP_NUM_THREADS=1 python scripts/bench/work_precision.py [HYDRA OVERRIDES...] [--pretrain 200]
        [--tols 1e-2,3e-3,1e-3,3e-4,1e-4,3e-5,1e-5] [--rounds 9] [--steps 3] [--no-torchdyn]
        [--methods dopri5,dopri5:hairer,tsit5] [--torchdyn-methods dopri5,tsit5] [--nodex-extra-tols auto]

Comparing adaptive solvers at *equal tolerance* (``scripts/bench/bench.py``) compares different
accuracies: two dopri5 codes with the same ``rtol``/``atol`` take different steps (initial-step
rule, norm, controller) and so deliver different gradients. This script measures what the
tolerance buys. For the composed config's model (default: the annuli experiment; trained for
``--pretrain`` nodex steps first, fresh weights with 0) on one fixed training batch, at each
tolerance it computes the loss gradient with respect to every parameter (input layer, field,
readout) with

- nodex backprop and nodex adjoint (``solver.engine=auto``: nodex's own solvers, ``--methods``:
  dopri5 by default, tsit5 too; ``METHOD:RULE`` sets ``solver.step_rule``, e.g. ``dopri5:hairer``), and
- torchdyn 1.0.6's ``NeuralODE`` (``--torchdyn-methods``: dopri5, tsit5) with
  ``sensitivity=autograd`` and ``adjoint`` (``bash scripts/install_bench_deps.sh``; same weights,
  same loss),

and reports its relative error ``|g - g*| / |g*|`` against a float64 nodex backprop gradient at
rtol = atol = 1e-10, and the median process-CPU ms of one forward + backward (no optimiser step;
implementations interleaved round-robin at each tolerance, so they share the machine's noise).
Then, from each implementation's error–time front over all its solvers (its best solver at each
error; interpolated log-log between measured tolerances), the CPU time nodex needs to reach the
gradient error torchdyn reaches at each point of its front, and the ratio nodex / torchdyn at
that equal error. Rows are named ``nodex backprop`` for dopri5 and ``nodex tsit5 backprop`` etc.

nodex is also measured at ``--nodex-extra-tols`` (default: one tolerance 3x below the tightest of ``--tols``), so
that its front reaches the smallest error torchdyn reaches at ``--tols`` (else that point is "outside nodex's
measured range"); those rows are timed interleaved with each other only. The summary gives the worst ratio over
all of torchdyn's front points and over those with a gradient error of at most 10% (looser points are single
lucky or unlucky step sequences, not an accuracy anyone trains at).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
from typing import Callable

import common
import torch
from common import PlainField, timed, torchdyn_twin
from torch import nn

from nodex.models import ModelOutput
from nodex.train.setup import Pipeline, build_optimizer

Gradient = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int, int]]


def slot_params(model: nn.Module) -> list[nn.Parameter]:
    """The parameters in one order shared by every implementation: input layer, field, readout."""
    return [*model.input_layer.parameters(), *model.field.parameters(), *model.readout.parameters()]


def label(implementation: str, method: str, sensitivity: str) -> str:
    """A row's name: ``nodex backprop`` for dopri5 (the names before tsit5 existed), else ``nodex tsit5 backprop``."""
    return f"{implementation} {sensitivity}" if method == "dopri5" else f"{implementation} {method} {sensitivity}"


def nodex_gradient(
    pipe: Pipeline, tol: float, sensitivity: str, method: str = "dopri5", engine: str = "auto"
) -> Gradient:
    """A gradient function of nodex's solver ``method`` (``METHOD`` or ``METHOD:STEP_RULE``) at rtol = atol = ``tol``
    (``engine=torchdiffeq``: torchdiffeq's, through the same model)."""
    method, _, step_rule = method.partition(":")
    replace = dict(rtol=tol, atol=tol, sensitivity=sensitivity, method=method, step_size=None, engine=engine,
                   step_rule=step_rule or "auto")
    model, settings = pipe.model, dataclasses.replace(pipe.model.settings, **replace)
    params = slot_params(model)

    def grad(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        model.settings = settings
        model.nfe.reset()
        model.zero_grad(set_to_none=True)
        out = model(X)
        nfe_f = model.nfe.count
        pipe.task.loss(out, y)[0].backward()
        return torch.cat([p.grad.reshape(-1) for p in params]), nfe_f, model.nfe.count - nfe_f

    return grad


def torchdyn_gradient(pipe: Pipeline, tol: float, sensitivity: str, method: str = "dopri5",
                      wrap: Callable[[nn.Module], nn.Module] | None = None) -> Gradient:
    """A gradient function of torchdyn 1.0.6's ``NeuralODE`` with its solver ``method`` at ``tol`` (``wrap``: a
    module around its field, e.g. a profiler range)."""
    from torchdyn.core import NeuralODE

    net = PlainField(pipe.model.field).sequential()
    tols = dict(atol=tol, rtol=tol, atol_adjoint=tol, rtol_adjoint=tol)
    node = NeuralODE(wrap(net) if wrap else net, solver=method, sensitivity=sensitivity,
                     seminorm=pipe.model.settings.seminorm, **tols)
    input_layer, readout = copy.deepcopy(pipe.model.input_layer), copy.deepcopy(pipe.model.readout)
    params = [*input_layer.parameters(), *net.parameters(), *readout.parameters()]
    t_span = torch.linspace(0, pipe.model.S, 2)

    def grad(X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        for p in params:
            p.grad = None
        node.vf.nfe = 0
        z = node(input_layer(X), t_span)[1][-1]
        nfe_f = int(node.vf.nfe)
        pipe.task.loss(ModelOutput(readout(z), z), y)[0].backward()
        return torch.cat([p.grad.reshape(-1) for p in params]), nfe_f, int(node.vf.nfe) - nfe_f

    return grad


def reference_gradient(pipe: Pipeline, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Float64 nodex backprop at rtol = atol = 1e-10 (the model is copied; ``pipe`` is untouched)."""
    twin = copy.copy(pipe)
    twin.model = copy.deepcopy(pipe.model).double()
    g, _, _ = nodex_gradient(twin, 1e-10, "autograd")(X.double(), y)
    return g.float()


def front_time(points: list[tuple[float, float]], error: float) -> float | None:
    """CPU time to reach ``error`` on the error–time front of ``points`` ``(error, ms)``.

    The front keeps, in order of time, each point that lowers the error; between two front points
    the time is interpolated log-log. An error the cheapest point already beats gets that point's
    time (an upper bound); one below every measured error gets ``None``.
    """
    front: list[tuple[float, float]] = []
    for e, t in sorted(points, key=lambda p: p[1]):
        if not front or e < front[-1][0]:
            front.append((e, t))
    if error >= front[0][0]:
        return front[0][1]
    for (e0, t0), (e1, t1) in zip(front, front[1:]):
        if e1 <= error <= e0:
            w = (math.log(error) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))
    return None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--pretrain", type=int, default=200,
                        help="nodex training steps before measuring (0: fresh weights)")
    parser.add_argument("--tols", default="1e-2,3e-3,1e-3,3e-4,1e-4,3e-5,1e-5")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3, help="gradient evaluations per timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-torchdyn", action="store_true")
    parser.add_argument("--methods", default="dopri5",
                        help="nodex's solvers, comma-separated (dopri5, tsit5; METHOD:RULE sets solver.step_rule)")
    parser.add_argument("--torchdyn-methods", default="dopri5",
                        help="torchdyn's solvers, comma-separated (dopri5, tsit5)")
    parser.add_argument("--nodex-extra-tols", default="auto",
                        help="tolerances measured for nodex only, comma-separated (auto: the tightest of --tols / 3; "
                             "none: no extra ones)")
    parser.add_argument("--torchdiffeq", action="store_true",
                        help="also torchdiffeq's dopri5 through the same model (solver.engine=torchdiffeq)")
    return parser.parse_args()


def trained_pipeline(overrides: list[str], pretrain: int) -> tuple[Pipeline, torch.Tensor, torch.Tensor]:
    """The composed config's pipeline after ``pretrain`` training steps (trained weights: the regime where adaptive
    NFE has grown), and one fresh training batch ``(X (B, ...), y (B, ...))`` to measure on."""
    cfg = common.compose(overrides)
    pipe = common.pipeline(cfg)
    batch = cfg.trainer.batch_size or cfg.data.n_train
    sample = (lambda: pipe.data.sampler(batch)) if pipe.data.sampler else (lambda: pipe.data.train)
    opt = build_optimizer(cfg.trainer, pipe.model, 1)[0]
    for _ in range(pretrain):
        Xp, yp = sample()
        opt.zero_grad(set_to_none=True)
        pipe.task.loss(pipe.model(Xp), yp)[0].backward()
        opt.step()
    X, y = sample()
    return pipe, X[:batch], y[:batch]


def gradient_makers(
    pipe: Pipeline, X: torch.Tensor, args: argparse.Namespace
) -> dict[str, Callable[[float], Gradient]]:
    """Row name -> (tolerance -> gradient function), for every implementation, solver and sensitivity."""
    makers: dict[str, Callable[[float], Gradient]] = {}
    for method in args.methods.split(","):
        for sens, sensitivity in (("backprop", "autograd"), ("adjoint", "adjoint")):
            makers[label("nodex", method, sens)] = lambda tol, s=sensitivity, m=method: nodex_gradient(pipe, tol, s, m)
            if args.torchdiffeq and method == "dopri5":
                makers[label("torchdiffeq", method, sens)] = (
                    lambda tol, s=sensitivity: nodex_gradient(pipe, tol, s, "dopri5", "torchdiffeq")
                )
    if torchdyn_twin(pipe, X, disabled=args.no_torchdyn):
        for method in args.torchdyn_methods.split(","):
            for sens, sensitivity in (("backprop", "autograd"), ("adjoint", "adjoint")):
                makers[label("torchdyn", method, sens)] = (
                    lambda tol, s=sensitivity, m=method: torchdyn_gradient(pipe, tol, s, m)
                )
    return makers


def measure(makers: dict[str, Callable[[float], Gradient]], X: torch.Tensor, y: torch.Tensor, exact: torch.Tensor,
            tols: list[float], args: argparse.Namespace) -> dict[str, list[tuple[float, float, float]]]:
    """Print a row per implementation and tolerance; returns name -> ``[(tol, error, median ms)]``."""
    print("| implementation | tol | NFE fwd/bwd | relative gradient error | CPU ms (median) | min–max |")
    print("|---|---|---|---|---|---|")
    points: dict[str, list[tuple[float, float, float]]] = {name: [] for name in makers}
    extra = [] if args.nodex_extra_tols == "none" else (
        [min(tols) / 3] if args.nodex_extra_tols == "auto" else [float(t) for t in args.nodex_extra_tols.split(",")])
    for tol in [*tols, *extra]:
        fns = {name: make(tol) for name, make in makers.items() if tol in tols or name.startswith("nodex ")}
        errors, nfes, cpu = {}, {}, {name: [] for name in fns}
        for name, fn in fns.items():  # warm-up, and the error (deterministic at fixed weights)
            g, nf, nb = fn(X, y)
            errors[name], nfes[name] = float((g - exact).norm() / exact.norm()), (nf, nb)
        for _ in range(args.rounds):
            for name, fn in fns.items():
                cpu[name].append(timed(lambda fn=fn: fn(X, y), args.steps)[1])
        for name in fns:
            med = statistics.median(cpu[name])
            points[name].append((tol, errors[name], med))
            spread = f"{min(cpu[name]):.1f}–{max(cpu[name]):.1f}"
            print(f"| {name} | {tol:g} | {nfes[name][0]}/{nfes[name][1]} | {errors[name]:.2e} | {med:.1f} | {spread} |",
                  flush=True)
    return points


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    tols = [float(t) for t in args.tols.split(",")]

    pipe, X, y = trained_pipeline(args.overrides, args.pretrain)
    exact = reference_gradient(pipe, X, y)
    makers = gradient_makers(pipe, X, args)

    weights = f"trained {args.pretrain} steps" if args.pretrain else "fresh"
    print(f"config: {' '.join(args.overrides) or '(default)'} | batch {X.shape[0]} | threads {args.threads} | "
          f"weights: {weights} | {args.rounds}x{args.steps} evaluations | reference: float64 backprop at 1e-10")
    points = measure(makers, X, y, exact, tols, args)
    for rival in ("torchdyn", "torchdiffeq"):
        if any(name.startswith(rival + " ") for name in makers):
            print_equal_error(points, rival)


def best_front(points: dict[str, list[tuple[float, float, float]]], implementation: str, sens: str) -> list[tuple]:
    """``(error, ms, name, tol)`` of every measured point of ``implementation``'s solvers under ``sens``:
    the implementation's best method at each error is the front of their union."""
    return [(e, t, name, tol) for name, pts in points.items()
            if name.startswith(implementation + " ") and name.endswith(" " + sens) for tol, e, t in pts]


def print_equal_error(points: dict[str, list[tuple[float, float, float]]], rival: str = "torchdyn") -> None:
    """For each of ``rival``'s front points (over all its solvers), nodex's time at that error on the
    front of all nodex's solvers, and the ratio; then the largest ratio per sensitivity."""
    print()
    print(f"At equal gradient error, nodex vs {rival} (each side's best solver: the error–time front over all "
          "its solvers; nodex's time interpolated on its front):")
    print(f"| sensitivity | {rival} | tol | gradient error | {rival} CPU ms | nodex CPU ms at that error "
          f"| nodex / {rival} |")
    print("|---|---|---|---|---|---|---|")
    for sens in ("backprop", "adjoint"):
        theirs = best_front(points, rival, sens)
        ours = [(e, t) for e, t, _, _ in best_front(points, "nodex", sens)]
        ratios: list[tuple[float, float]] = []  # (nodex / rival, gradient error)
        for e, t, name, tol in sorted(theirs, key=lambda p: p[1]):
            if not math.isclose(front_time([(x, y) for x, y, _, _ in theirs], e) or 0.0, t, rel_tol=1e-9):
                continue  # off the rival's own front: a faster point of its reaches this error
            mine = front_time(ours, e)
            cell, ratio = "–", "outside nodex's measured range"
            if mine is not None:
                cell, ratio = f"{mine:.1f}", f"{mine / t:.2f}"
                ratios.append((mine / t, e))
            print(f"| {sens} | {name} | {tol:g} | {e:.2e} | {t:.1f} | {cell} | {ratio} |")
        if ratios:
            print(f"| {sens} | worst ratio | | | | | {max(r for r, _ in ratios):.2f} |")
        trained = [r for r, e in ratios if e <= 0.1]
        if trained:
            print(f"| {sens} | worst ratio at gradient errors <= 10% | | | | | {max(trained):.2f} |")


if __name__ == "__main__":
    main()
