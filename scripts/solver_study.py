"""Which adaptive solver should be the default? Every toy experiment under each candidate, paired by seed.

    python scripts/solver_study.py [--solvers dopri5,tsit5] [--seeds 0,1,2] [--only PATTERNS]
        [--out outputs/solver_study] [--compare-only] [OVERRIDES...]

For each candidate (``NAME`` sets ``solver.method``; ``NAME:RULE`` also ``solver.step_rule``, e.g.
``dopri5:hairer``) it runs ``scripts/reproduce.py --budget cpu`` into ``OUT/NAME/``: every experiment
that needs no dataset files, with its own config's budget, tolerances and sensitivity, one seed-ensemble
job per Neural ODE experiment (CNFs and the image stand-ins as separate seeds). The candidates run at the
same time, one job and one torch thread each, in the same order, so their wall times share the machine's
load. ``--only`` narrows the experiments (reproduce.py's patterns); ``OVERRIDES`` go to every run (e.g.
``trainer.max_steps=500`` for a cheaper pass over the long runs; then use a separate ``--out``).

Then (alone with ``--compare-only``) it pairs the runs by job and seed and prints, per job: the main
metric (the first of reproduce.py's main metrics the runs report) as mean ± sample std per candidate, the
per-seed outcome of each candidate against the first (better / tie / worse: a tie is within 1e-3 absolute
for an accuracy, within 1e-3 relative for a loss), forward and backward NFE per training step, wall
seconds per job and the time ratio to the first candidate. The summary line gives, per candidate, the
geometric mean of the time ratios and the number of jobs where its mean metric is worse by more than
the larger of the two seed std's.
"""

from __future__ import annotations

import argparse
import math
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodex.paper.report import Run, find_runs, metric_value  # noqa: E402
from nodex.paper.reproduce import MAIN_METRICS  # noqa: E402

HIGHER_IS_BETTER = ("test/accuracy",)


def solver_overrides(candidate: str) -> list[str]:
    """``dopri5`` -> ``[solver.method=dopri5]``; ``dopri5:hairer`` adds ``solver.step_rule=hairer``."""
    method, _, rule = candidate.partition(":")
    return [f"solver.method={method}"] + ([f"solver.step_rule={rule}"] if rule else [])


def run_all(args: argparse.Namespace, candidates: list[str]) -> int:
    """Start reproduce.py once per candidate, all at once; wait for every one. Returns the worst exit code."""
    procs = []
    for cand in candidates:
        out = Path(args.out) / cand.replace(":", "-")
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--budget", "cpu", "--seeds", args.seeds,
               "--jobs", "1", "--threads", "1", "--compare", "", "--out", str(out), "--report", str(out / "REPORT.md"),
               *(["--only", args.only] if args.only else []), *solver_overrides(cand), *args.overrides]
        print("$", shlex.join(cmd), flush=True)
        log = open(out / "study.log", "a")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for proc, log in procs:
        codes.append(proc.wait())
        log.close()
    return max(codes)


def job_and_seed(run: Run, root: Path) -> tuple[str, int]:
    """``(job label, seed)``: the job folder reproduce.py made under the candidate's folder, the run's seed."""
    return run.path.relative_to(root).parts[0], int(run.config.get("seed", -1))


def collect(root: Path) -> dict[tuple[str, int], Run]:
    """Every completed run under ``root`` by (job, seed)."""
    return {job_and_seed(r, root): r for r in find_runs([root]) if r.ok} if root.exists() else {}


def main_metric(runs: list[Run]) -> Optional[str]:
    return next((m for m in MAIN_METRICS if all(metric_value(r, m) is not None for r in runs)), None)


def outcome(metric: str, base: float, cand: float) -> str:
    """``better`` / ``tie`` / ``worse`` of ``cand`` against ``base``."""
    higher = metric in HIGHER_IS_BETTER
    tie = 1e-3 if higher else 1e-3 * abs(base)
    if abs(cand - base) <= tie:
        return "tie"
    return "better" if (cand > base) == higher else "worse"


def _stat(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    return f"{mean:.4g}" if len(values) < 2 else f"{mean:.4g} ± {statistics.stdev(values):.2g}"


def _mean(runs: list[Run], key: str) -> float:
    return statistics.fmean(float(r.result.get(key) or 0.0) for r in runs)


def compare(out: Path, candidates: list[str]) -> str:
    """The markdown comparison of the candidates' runs under ``out`` (the first candidate is the baseline)."""
    runs = {c: collect(out / c.replace(":", "-")) for c in candidates}
    base, others = candidates[0], candidates[1:]
    jobs = sorted({job for job, _ in runs[base]})
    lines = ["| job | metric | seeds | " + " | ".join(candidates) + " | " + " | ".join(f"{c} vs {base} per seed"
                                                                            for c in others)
             + " | NFE fwd/bwd per step | wall s per job | " + " | ".join(f"time {c}/{base}" for c in others) + " |"]
    lines.append("|" + "---|" * (5 + 2 * len(others) + len(candidates)))
    ratios: dict[str, list[float]] = {c: [] for c in others}
    worse: dict[str, list[str]] = {c: [] for c in others}
    for job in jobs:
        seeds = sorted(s for j, s in runs[base] if j == job and all((j, s) in runs[c] for c in others))
        if not seeds:
            continue
        paired = {c: [runs[c][(job, s)] for s in seeds] for c in candidates}
        metric = main_metric([r for rs in paired.values() for r in rs])
        if metric is None:
            continue
        values = {c: [metric_value(r, metric) for r in paired[c]] for c in candidates}
        cells = [_stat(values[c]) for c in candidates]
        per_seed = []
        for c in others:
            counts = [outcome(metric, b, v) for b, v in zip(values[base], values[c])]
            per_seed.append(" / ".join(f"{counts.count(k)} {k}" for k in ("better", "tie", "worse") if k in counts))
            spread = max(statistics.stdev(values[c]) if len(seeds) > 1 else 0.0,
                         statistics.stdev(values[base]) if len(seeds) > 1 else 0.0)
            gap = statistics.fmean(values[c]) - statistics.fmean(values[base])
            if outcome(metric, 0.0, gap) == "worse" and abs(gap) > spread:
                worse[c].append(job)
        nfe = ", ".join(f"{_mean(paired[c], 'nfe_forward'):.1f}/{_mean(paired[c], 'nfe_backward'):.1f}"
                        for c in candidates)
        walls = {c: _job_wall(paired[c]) for c in candidates}
        for c in others:
            ratios[c].append(walls[c] / walls[base])
        lines.append(f"| {job} | {metric} | {len(seeds)} | " + " | ".join(cells) + " | " + " | ".join(per_seed)
                     + f" | {nfe} | " + ", ".join(f"{walls[c]:.0f}" for c in candidates) + " | "
                     + " | ".join(f"{walls[c] / walls[base]:.2f}" for c in others) + " |")
    for c in others:
        if ratios[c]:
            geo = math.exp(statistics.fmean(math.log(r) for r in ratios[c]))
            lines.append(f"\n{c} vs {base} over {len(ratios[c])} job(s): time ratio geometric mean {geo:.2f} "
                         f"(range {min(ratios[c]):.2f}–{max(ratios[c]):.2f}); mean metric worse by more than the "
                         f"seed std in {len(worse[c])}: {', '.join(worse[c]) or 'none'}")
    return "\n".join(lines)


def _job_wall(runs: list[Run]) -> float:
    """Wall seconds of one job: an ensemble's members share one (their job's); separate seeds are averaged."""
    walls = [float(r.result.get("wall_time_s") or 0.0) for r in runs]
    return walls[0] if len(set(walls)) == 1 else statistics.fmean(walls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run (e.g. trainer.max_steps=500)")
    parser.add_argument("--solvers", default="dopri5,tsit5", help="candidates, the first is the baseline")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default="", help="reproduce.py's --only patterns")
    parser.add_argument("--out", default="outputs/solver_study")
    parser.add_argument("--compare-only", action="store_true", help="do not run; compare the runs under --out")
    args = parser.parse_args()
    candidates = args.solvers.split(",")
    if len(candidates) < 2:
        parser.error("--solvers needs at least two candidates, e.g. dopri5,tsit5")
    code = 0 if args.compare_only else run_all(args, candidates)
    print(compare(Path(args.out), candidates))
    return code


if __name__ == "__main__":
    sys.exit(main())
