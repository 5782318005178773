"""Where one gradient's time goes: the field's own work vs everything around it, nodex beside torchdyn.

    OMP_NUM_THREADS=1 python scripts/bench/step_profile.py [HYDRA OVERRIDES...] [--pretrain 200]
        [--method tsit5] [--tol 1e-4] [--sensitivity autograd] [--repeats 5] [--rounds 7] [--no-torchdyn]

For the composed config's model (default: the annuli experiment, trained ``--pretrain`` nodex steps first, as
``work_precision.py`` does) on one training batch, it profiles ``--repeats`` gradients (forward + backward: the
function ``work_precision.py`` times) of nodex's solver ``--method`` (``METHOD:RULE`` sets ``solver.step_rule``)
and of torchdyn 1.0.6's same method where it is installed (``bash scripts/install_bench_deps.sh``). With
``tsit5`` or ``dopri5:hairer`` both take the same steps (equal NFE, printed), so the difference is the cost of an
evaluation. Each op's CPU time goes to one of

- **field forward**: the ops of the field's evaluations (each evaluation runs inside a profiler range), with the
  Python of the field's modules;
- **field backward**: the autograd nodes those ops recorded (matched by autograd sequence number);
- **solver forward**: every other forward op — stage sums, error norm, step control, and the input layer,
  readout and loss (one evaluation each);
- **solver backward**: every other autograd node — the stage sums' backward, gradient accumulation;
- **Python between ops**: the profiled CPU time no op accounts for (the solver's Python, dispatch; under the
  adjoint the solve runs inside an autograd function, whose Python counts as solver time).

The table gives ms per gradient under the profiler (which adds a little per op), the share of each side's total,
and the ops that cost most outside the field. The last line gives the unprofiled median CPU ms per gradient of
each side (``--rounds`` interleaved rounds of ``--repeats``) and their ratio, and the ratio the two would have if
nodex's time outside the field were zero: the floor of the per-evaluation ratio at equal steps.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import common
import torch
from torch import nn
from torch.profiler import profile, record_function
from work_precision import Gradient, nodex_gradient, torchdyn_gradient, trained_pipeline

FIELD = "nodex.bench.field"  # the profiler range around each field evaluation
CATEGORIES = ("field forward", "field backward", "solver forward", "solver backward", "Python between ops")
BACKWARD_NODE = "autograd::engine::evaluate_function: "


class Ranged(nn.Module):
    """``inner`` with each call inside the profiler range :data:`FIELD`; its parameters are ``inner``'s. Its
    ``forward`` takes no ``t`` argument by name, so torchdyn calls it as it calls the bare ``nn.Sequential``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        with record_function(FIELD):
            return self.inner(*args)


def _inside(event, name: str) -> bool:
    """Whether ``event`` or one of its ancestors is ``name``."""
    while event is not None:
        if event.name == name:
            return True
        event = event.cpu_parent
    return False


def _backward_node(event):
    """The autograd node ``event`` runs in (its nearest ancestor-or-self that is one), or ``None``: a forward op."""
    while event is not None and not event.name.startswith(BACKWARD_NODE):
        event = event.cpu_parent
    return event


def attribute(events, cpu_ms: float, gradients: int) -> tuple[dict[str, float], Counter]:
    """ms per gradient in each of :data:`CATEGORIES` from the profiler's ``events`` of ``gradients`` gradients that
    took ``cpu_ms`` of process CPU in all, and the ms per gradient of each op (by name) outside the field.

    Each event's self time goes to the field's forward if it runs inside a :data:`FIELD` range, else to the field's
    backward if the autograd node it runs in was recorded by an op inside such a range, else to the solver (forward
    or backward: whether it runs in an autograd node). Nested nodes count: an adjoint's backward is one node that
    evaluates the field and its vector–Jacobian products inside it."""
    field_seqs = {e.sequence_nr for e in events if e.sequence_nr >= 0 and e.name != FIELD and _inside(e, FIELD)}
    totals = dict.fromkeys(CATEGORIES, 0.0)
    outside: Counter = Counter()
    for event in events:
        ms = event.self_cpu_time_total / 1000 / gradients
        if _inside(event, FIELD):
            totals["field forward"] += ms
            continue
        node = _backward_node(event)
        if node is not None and node.sequence_nr in field_seqs:
            totals["field backward"] += ms
            continue
        totals["solver forward" if node is None else "solver backward"] += ms
        outside[event.name.removeprefix(BACKWARD_NODE)] += ms
    totals["Python between ops"] = max(0.0, cpu_ms / gradients - sum(totals.values()))
    return totals, outside


def profiled(fn: Gradient, X: torch.Tensor, y: torch.Tensor, repeats: int) -> tuple[dict[str, float], Counter]:
    """:func:`attribute` of ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn(X, y)
    with profile() as prof:
        start = time.process_time()
        for _ in range(repeats):
            fn(X, y)
        cpu_ms = 1000 * (time.process_time() - start)
    return attribute(prof.events(), cpu_ms, repeats)


def unprofiled(fns: dict[str, Gradient], X: torch.Tensor, y: torch.Tensor, repeats: int, rounds: int
               ) -> dict[str, float]:
    """Median process-CPU ms per gradient of each of ``fns``, interleaved round-robin."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(common.timed(lambda fn=fn: fn(X, y), repeats)[1])
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_profile(rows: dict[str, tuple[dict[str, float], Counter]], top: int = 6) -> None:
    names = list(rows)
    print("| where | " + " | ".join(f"{n} ms/gradient | {n} share" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    grand = {n: sum(rows[n][0].values()) for n in names}
    for category in (*CATEGORIES, "total"):
        cells = []
        for n in names:
            ms = grand[n] if category == "total" else rows[n][0][category]
            cells.append(f"{ms:.1f} | {ms / grand[n]:.0%}")
        print(f"| {category} | " + " | ".join(cells) + " |")
    for n in names:
        ops = ", ".join(f"{op} {ms:.1f}" for op, ms in rows[n][1].most_common(top))
        print(f"{n}: costliest ops outside the field (ms/gradient): {ops}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--pretrain", type=int, default=200, help="nodex training steps first (0: fresh weights)")
    parser.add_argument("--method", default="tsit5", help="nodex's solver (METHOD:RULE sets solver.step_rule)")
    parser.add_argument("--tol", type=float, default=1e-4, help="rtol = atol")
    parser.add_argument("--sensitivity", default="autograd", choices=("autograd", "adjoint"))
    parser.add_argument("--repeats", type=int, default=5, help="gradients per profile and per timing")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the unprofiled timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-torchdyn", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    pipe, X, y = trained_pipeline(args.overrides, args.pretrain)
    use_torchdyn = common.torchdyn_twin(pipe, X, disabled=args.no_torchdyn)
    fns: dict[str, Gradient] = {}
    if use_torchdyn:  # built from the bare field, before nodex's is wrapped
        fns["torchdyn"] = torchdyn_gradient(pipe, args.tol, args.sensitivity, args.method.partition(":")[0], Ranged)
    pipe.model.field = Ranged(pipe.model.field)
    fns = {"nodex": nodex_gradient(pipe, args.tol, args.sensitivity, args.method), **fns}
    nfe = {name: fn(X, y)[1:] for name, fn in fns.items()}
    print(f"config: {' '.join(args.overrides) or '(default)'} | batch {X.shape[0]} | threads {args.threads} | "
          f"{args.method} tol {args.tol:g} {args.sensitivity} | NFE fwd/bwd: "
          + ", ".join(f"{n} {f}/{b}" for n, (f, b) in nfe.items()) + f" | {args.repeats} gradients profiled")
    rows = {name: profiled(fn, X, y, args.repeats) for name, fn in fns.items()}
    print_profile(rows)
    cpu = unprofiled(fns, X, y, args.repeats, args.rounds)
    line = "unprofiled CPU ms/gradient (median): " + ", ".join(f"{n} {ms:.1f}" for n, ms in cpu.items())
    if use_torchdyn:
        totals = rows["nodex"][0]
        field_share = (totals["field forward"] + totals["field backward"]) / sum(totals.values())
        ratio, floor = cpu["nodex"] / cpu["torchdyn"], field_share * cpu["nodex"] / cpu["torchdyn"]
        line += f" | nodex / torchdyn {ratio:.2f}; with nothing outside nodex's field {floor:.2f}"
    print(line)


if __name__ == "__main__":
    main()
