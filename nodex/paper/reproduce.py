"""``nodex reproduce``: run the paper's experiments (:mod:`~nodex.paper.planning`, :mod:`~nodex.paper.running`)
with a budget (``configs/budget/``) and write the reproduction page (:mod:`~nodex.paper.page`). Everything
lands in ``--out`` (runs, ``REPRODUCTION.md``, ``docs/reproduction/``) unless ``--report PATH`` names the page."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import shlex
import sys
import time
from pathlib import Path

from nodex.paper.figures import FigureSink, clear
from nodex.report import OneLineParser
from nodex.paper.page import collect, earlier_sections, render_reproduction
from nodex.paper.planning import BUDGETS, commands, compare_cost, plan
from nodex.paper.running import add_wall, recorded_commands, run_jobs


OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--only", dict(default="", help="comma-separated experiment names or patterns (e.g. 'reflection_*,annuli_*')")),
    ("--seeds", dict(default="", help="comma-separated seeds (default: the budget's)")),
    ("--jobs", dict(type=int, default=1, help="experiments run at once (each gets cores/jobs torch threads)")),
    ("--threads", dict(type=int, default=None, help="torch threads per experiment (default: cores / jobs)")),
    ("--launcher", dict(default=None, help="Hydra launcher for each experiment's seeds (joblib, slurm, ray, ...)")),
    ("--out", dict(default=None, help="run directory root (default: outputs/reproduce/BUDGET/DATE_TIME)")),
    ("--report", dict(default=None, help="the page to write (default: OUT/REPRODUCTION.md)")),
    ("--earlier", dict(default=None, help="an earlier page: claims with no run here are copied from it, marked so")),
    ("--report-only", dict(action="store_true", help="do not run; rewrite the page from the runs under --out")),
    ("--resume", dict(action="store_true", help="skip experiments whose seeds all completed under --out")),
    ("--timeout", dict(type=float, default=None, help="seconds per experiment before it is stopped")),
    ("--dry-run", dict(action="store_true", help="print the commands (and what --compare adds) and exit")),
    ("--separate", dict(action="store_true", help="train every seed as its own run (default: one seed ensemble)")),
    ("--compare", dict(default=None, help="patterns also run as separate seeds (default: the budget's; '' for none)")),
    ("--figures", dict(default=None, help="folder for the page's figures (default: docs/reproduction by the page)")),
)


def _parser() -> argparse.ArgumentParser:
    """The ``nodex reproduce`` command line."""
    parser = OneLineParser(
        prog="nodex reproduce",
        description="Run every paper experiment in configs/experiment/ with a budget (configs/budget/) and write "
                    "the reproduction page (each claim of the paper: its value, ours, pass/fail) into --out.")
    parser.add_argument("--budget", choices=list(BUDGETS), default="smoke",
                        help="; ".join(f"{b.name}: {b.description}" for b in BUDGETS.values()))
    for flag, kwargs in OPTIONS:
        parser.add_argument(flag, **kwargs)
    parser.add_argument("overrides", nargs="*", help="extra overrides for every experiment (applied where the key "
                                                     "exists), e.g. trainer.device=cuda")
    return parser


def _dry_run(jobs, out_dir: Path, seeds: tuple[int, ...], launcher, cost: str) -> int:
    """Print every job's command lines (a skipped job: why), then what ``--compare`` adds."""
    for job in jobs:
        print(f"# {job.label}: skipped ({job.skip})" if job.skip else
              "\n".join(shlex.join(cmd) for _, cmd in commands(job, out_dir, seeds, None, launcher)))
    if cost:
        print("# " + cost)
    return 0


class NothingToReport(Exception):
    """No run of the selected experiments under ``--out``: a page would claim nothing (and replace one that did)."""


def _write_page(args, argv: list[str], jobs, others, budget, seeds, out_dir: Path, wall) -> tuple[Path, int, int]:
    """Write the page for the runs under ``out_dir``; ``(its path, the number of runs, of failed runs)``.

    Raises:
        NothingToReport: no run under ``out_dir`` (nothing is written or removed).
    """
    report_path = Path(args.report) if args.report else out_dir / "REPRODUCTION.md"
    earlier = earlier_sections(Path(args.earlier).read_text(encoding="utf-8")) if args.earlier else None
    groups = collect(jobs, out_dir)
    if not any(g.runs or g.failed for g in groups.values()):
        raise NothingToReport(f"no runs of the selected experiments under {out_dir}: nothing to report (give the "
                              "--out of an earlier reproduce, or run without --report-only); nothing was written")
    fig_dir = Path(args.figures) if args.figures else report_path.parent / "docs" / "reproduction"
    carried = {m for sec in (earlier or {}).values() if isinstance(sec, dict) for ln in sec["lines"]
               for m in re.findall(r'/([^/"]+\.png)"', ln)}
    clear(fig_dir, carried, _figures_of(report_path))
    sink = FigureSink(fig_dir, os.path.relpath(fig_dir, report_path.parent))
    this = "nodex reproduce " + shlex.join(argv)
    made = recorded_commands(out_dir)
    made = made + [this + "  # wrote this page"] if made and args.report_only else made or [this]
    text = render_reproduction(jobs, others, groups, budget, seeds, made, wall, sink, earlier)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text)
    return report_path, sum(len(g.runs) for g in groups.values()), sum(len(g.failed) for g in groups.values())


def _figures_of(page: Path) -> set[str]:
    """The PNG names an existing page at ``page`` shows: the only figures a rewrite of it may remove (another page's
    figures in the same folder stay)."""
    if not page.is_file():
        return set()
    return set(re.findall(r'/([^/"]+\.png)"', page.read_text(encoding="utf-8", errors="replace")))


def _seeds(parser: argparse.ArgumentParser, text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2`` as integers (a one-line usage error otherwise)."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        parser.error(f"--seeds {text}: give comma-separated integers, e.g. --seeds 0,1,2")


def reproduce_main(argv: list[str]) -> int:
    """``nodex reproduce --budget smoke|cpu|full [--only PATTERNS] [--jobs N] [--out DIR] ...``"""
    parser = _parser()
    args = parser.parse_args(argv)
    budget = BUDGETS[args.budget]
    seeds = _seeds(parser, args.seeds) or budget.seeds
    for flag, value in (("--jobs", args.jobs), ("--threads", args.threads), ("--timeout", args.timeout)):
        if value is not None and not value > 0:  # NaN too
            parser.error(f"{flag} {value} must be positive")
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    if args.report_only and not args.out:
        parser.error("--report-only needs --out DIR (the run directory root of an earlier reproduce)")
    if args.earlier and not Path(args.earlier).is_file():
        parser.error(f"--earlier {args.earlier}: no such file (give an earlier REPRODUCTION.md)")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = Path(args.out or Path("outputs") / "reproduce" / budget.name / stamp)
    compare = budget.compare if args.compare is None else tuple(s.strip() for s in args.compare.split(",") if s.strip())
    jobs, others = plan(budget, only, args.overrides, compare=compare if len(seeds) > 1 else (),
                        separate=args.separate)
    if not jobs:
        print(f"reproduce: no paper experiment matches --only {args.only}", file=sys.stderr)
        return 2
    runnable = [j for j in jobs if j.skip is None]
    print(f"reproduce: budget {budget.name}, seeds {','.join(map(str, seeds))}: {len(runnable)} runs of "
          f"{len(jobs)} ({len(jobs) - len(runnable)} outside this budget) -> {out_dir}", flush=True)
    if args.dry_run:
        return _dry_run(jobs, out_dir, seeds, args.launcher, compare_cost(jobs, budget, len(seeds)))
    started = time.time()
    incomplete = 0
    if not args.report_only:
        incomplete = run_jobs(jobs, budget, out_dir, seeds, args.jobs, args.launcher, args.resume, args.timeout,
                              args.threads)
    this = "nodex reproduce " + shlex.join(argv)
    wall = add_wall(out_dir, None if args.report_only else (started, time.time()), this)
    try:
        report_path, runs, failed = _write_page(args, argv, jobs, others, budget, seeds, out_dir, wall)
    except NothingToReport as exc:
        print(f"reproduce: error: {exc}", file=sys.stderr)
        return 1
    short = f", {incomplete} experiment(s) short of their seeds (see each one's reproduce.log)" if incomplete else ""
    print(f"reproduce: wrote {report_path} ({runs} runs, {failed} failed{short})")
    return 0 if failed == 0 and incomplete == 0 else 1
