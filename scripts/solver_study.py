"""Which adaptive solver should be the default? Every toy experiment under each candidate, paired by seed.

    python scripts/solver_study.py [--solvers dopri5,tsit5] [--seeds 0,1,2] [--only PATTERNS]
        [--out outputs/solver_study] [--compare-only] [OVERRIDES...]

For each candidate (``NAME`` sets ``solver.method``; ``NAME:RULE`` also ``solver.step_rule``, e.g.
``dopri5:hairer``) it runs ``nodex reproduce --budget cpu`` into ``OUT/NAME/``: every experiment
that needs no dataset files, with its own config's budget, tolerances and sensitivity, one seed-ensemble
job per Neural ODE experiment (CNFs and the image stand-ins as separate seeds). The candidates run at the
same time, one job and one torch thread each, in the same order, so their wall times share the machine's
load. ``--only`` narrows the experiments (``nodex reproduce``'s patterns); ``OVERRIDES`` go to every run (e.g.
``trainer.max_steps=500`` for a cheaper pass over the long runs; then use a separate ``--out``).

Then (alone with ``--compare-only``) it pairs the runs by job and seed and prints, per job: the main
metric (the first of the reproduction page's main metrics the runs report) as mean ± sample std per candidate, the
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nodex.report import Group, Run, find_runs, metric_value, stat_cell  # noqa: E402
from nodex.paper.page import main_metric  # noqa: E402

HIGHER_IS_BETTER = ("test/accuracy",)


def solver_overrides(candidate: str) -> list[str]:
    """``dopri5`` -> ``[solver.method=dopri5]``; ``dopri5:hairer`` adds ``solver.step_rule=hairer``."""
    method, _, rule = candidate.partition(":")
    return [f"solver.method={method}"] + ([f"solver.step_rule={rule}"] if rule else [])


def run_all(args: argparse.Namespace, candidates: list[str]) -> int:
    """Start ``nodex reproduce`` once per candidate, all at once; wait for every one. Returns the worst exit code."""
    procs = []
    for cand in candidates:
        out = Path(args.out) / cand.replace(":", "-")
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "nodex.cli", "reproduce", "--budget", "cpu", "--seeds", args.seeds,
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
    """``(job label, seed)``: the job folder ``nodex reproduce`` made under the candidate's folder, the run's seed."""
    return run.path.relative_to(root).parts[0], int(run.config.get("seed", -1))


def collect(root: Path) -> dict[tuple[str, int], Run]:
    """Every completed run under ``root`` by (job, seed)."""
    return {job_and_seed(r, root): r for r in find_runs([root]) if r.ok} if root.exists() else {}


def _direction(metric: str) -> int:
    """+1 where a higher ``metric`` is better, -1 where lower is."""
    return 1 if metric in HIGHER_IS_BETTER else -1


def outcome(metric: str, base: float, cand: float) -> str:
    """``better`` / ``tie`` / ``worse`` of ``cand`` against ``base``."""
    tie = 1e-3 if metric in HIGHER_IS_BETTER else 1e-3 * abs(base)
    if abs(cand - base) <= tie:
        return "tie"
    return "better" if (cand - base) * _direction(metric) > 0 else "worse"


def compare(out: Path, candidates: list[str]) -> str:
    """The markdown comparison of the candidates' runs under ``out`` (the first candidate is the baseline)."""
    runs = {c: collect(out / c.replace(":", "-")) for c in candidates}
    base, others = candidates[0], candidates[1:]
    lines = ["| job | metric | seeds | " + " | ".join(candidates) + " | " + " | ".join(f"{c} vs {base} per seed"
                                                                            for c in others)
             + " | NFE fwd/bwd per step | wall s per job | " + " | ".join(f"time {c}/{base}" for c in others) + " |"]
    lines.append("|" + "---|" * (5 + 2 * len(others) + len(candidates)))
    ratios: dict[str, list[float]] = {c: [] for c in others}
    worse: dict[str, list[str]] = {c: [] for c in others}
    for job in sorted({job for job, _ in runs[base]}):
        seeds = sorted(s for j, s in runs[base] if j == job and all((j, s) in runs[c] for c in others))
        groups = {c: Group((job, c), [runs[c][(job, s)] for s in seeds]) for c in candidates}
        metric = main_metric(Group((job,), [r for g in groups.values() for r in g.runs])) if seeds else None
        if metric is not None:
            lines.append(_row(job, metric, groups, base, ratios, worse))
    for c in others:
        if ratios[c]:
            geo = math.exp(statistics.fmean(math.log(r) for r in ratios[c]))
            lines.append(f"\n{c} vs {base} over {len(ratios[c])} job(s): time ratio geometric mean {geo:.2f} "
                         f"(range {min(ratios[c]):.2f}–{max(ratios[c]):.2f}); mean metric worse by more than the "
                         f"seed std in {len(worse[c])}: {', '.join(worse[c]) or 'none'}")
    return "\n".join(lines)


def _row(job: str, metric: str, groups: dict[str, Group], base: str, ratios: dict[str, list[float]],
         worse: dict[str, list[str]]) -> str:
    """One job's table row (``groups``: each candidate's runs, in seed order). Adds each other candidate's time
    ratio to ``ratios`` and the job to ``worse[c]`` where c's mean metric is worse by more than either seed std."""
    others = [c for c in groups if c != base]
    base_values = [metric_value(r, metric) for r in groups[base].runs]
    per_seed = []
    for c in others:
        counts = [outcome(metric, b, metric_value(r, metric)) for b, r in zip(base_values, groups[c].runs)]
        per_seed.append(" / ".join(f"{counts.count(k)} {k}" for k in ("better", "tie", "worse") if k in counts))
        (mean_c, std_c, _), (mean_b, std_b, _) = groups[c].stat(metric), groups[base].stat(metric)
        if (mean_c - mean_b) * _direction(metric) < 0 and abs(mean_c - mean_b) > max(std_c, std_b):
            worse[c].append(job)
    walls = {c: _job_wall(g.runs) for c, g in groups.items()}
    for c in others:
        ratios[c].append(walls[c] / walls[base])
    nfe = ", ".join(f"{_mean(g, 'nfe_forward'):.1f}/{_mean(g, 'nfe_backward'):.1f}" for g in groups.values())
    cells = [job, metric, str(len(base_values)), *(stat_cell(g.stat(metric)) for g in groups.values()), *per_seed,
             nfe, ", ".join(f"{w:.0f}" for w in walls.values()), *(f"{walls[c] / walls[base]:.2f}" for c in others)]
    return "| " + " | ".join(cells) + " |"


def _mean(group: Group, key: str) -> float:
    """The mean of ``key`` (e.g. ``nfe_forward``) over the group's runs; 0 where no run reports it."""
    stat = group.stat(key)
    return stat[0] if stat else 0.0


def _job_wall(runs: list[Run]) -> float:
    """Wall seconds of one job: an ensemble's members share one (their job's); separate seeds are averaged."""
    walls = [float(r.result.get("wall_time_s") or 0.0) for r in runs]
    return walls[0] if len(set(walls)) == 1 else statistics.fmean(walls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run (e.g. trainer.max_steps=500)")
    parser.add_argument("--solvers", default="dopri5,tsit5", help="candidates, the first is the baseline")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default="", help="nodex reproduce's --only patterns")
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
