"""``nodex reproduce`` / ``scripts/reproduce.py``: run the paper's experiments with a budget and
write ``REPRODUCTION.md`` (each claim of ``shared/paper.md`` §3: the paper's value, ours, and
pass/fail against a stated tolerance).

The experiments are discovered from ``configs/experiment/`` (every file whose description names
the paper); the claims and the extra variant runs come from :mod:`nodex.paper.claims`; the
budgets are the :data:`BUDGETS` table below, the one place that says how much each experiment
is trained under ``smoke``, ``cpu`` and ``full``. Each experiment runs as one
``nodex train --multirun experiment=NAME seed=...`` subprocess (``--jobs N`` of them at once),
so a crash in one never stops the others, and every run directory is an ordinary nodex run
(``nodex report`` reads it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nodex.config import compose
from nodex.paper.claims import CLAIMS, VARIANTS, Check, paper_value
from nodex.paper.experiments import Experiment, discover
from nodex.paper.report import Group, Run, find_runs, stat_cell

# ----------------------------------------------------------------------------------------------
# Budgets: the one place that sets how much each experiment is trained.
#
# Override syntax: ``key=value`` is applied where ``key`` exists in the experiment's composed
# config (so data-size keys touch only the data sets that have them); ``key<=N`` caps an integer
# key at N (a null, meaning "all" or "full batch", becomes N too); a key without a dot (a config
# group such as ``solver=rk4``) always applies.


@dataclass(frozen=True)
class Rule:
    """Extra overrides for the experiments that match: a name pattern and/or config values."""

    overrides: tuple[str, ...]
    experiments: str = "*"
    where: tuple[tuple[str, tuple[Any, ...]], ...] = ()


@dataclass(frozen=True)
class Budget:
    name: str
    description: str
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    needs_files: bool = False   # run the experiments that read dataset files (data.root)?
    set_threads: bool = True    # pass trainer.num_threads = cores / jobs


IMAGE_DATA = ("digits", "mnist5k", "mnist", "cifar10")

BUDGETS: dict[str, Budget] = {
    "smoke": Budget(
        "smoke",
        "a wiring check in minutes: every paper experiment that needs no dataset files, 3 steps on tiny "
        "data splits, one seed (numbers are meaningless; claims will mostly fail)",
        seeds=(0,),
        overrides=("trainer.epochs=null", "trainer.max_steps=3", "trainer.log_every=1", "trainer.val_every=3",
                   "trainer.checkpoint_every=3", "trainer.batch_size<=32", "trainer.eval_batch_size=64",
                   "trainer.plots=false", "logger.tensorboard=false",
                   "data.n_train<=64", "data.n_val<=32", "data.n_test<=64"),
        rules=(Rule(("solver.method=rk4", "solver.step_size=0.5"), where=(("data.name", IMAGE_DATA),)),),
    ),
    "cpu": Budget(
        "cpu",
        "every paper experiment that needs no dataset files (the toy tasks and the digits / 5k-MNIST CPU "
        "stand-ins of the image table) with its own CPU-sized budget as written in its config file, one seed",
        seeds=(0,),
    ),
    "full": Budget(
        "full",
        "every paper experiment with its own budget, including the results-table runs on full MNIST and "
        "CIFAR-10 (a GPU, and the dataset files under data.root: add data.download=true where the network "
        "allows), three seeds",
        seeds=(0, 1, 2),
        needs_files=True,
        set_threads=False,
    ),
}

PAPER_RE = re.compile(r"\bpaper\b", re.IGNORECASE)
MAIN_METRICS = ("test/accuracy", "test/mse", "test/nll", "test/extrapolation_mse", "test/tracking_mse")


# ----------------------------------------------------------------------------------------------
# Planning


@dataclass
class Job:
    """One run label: an experiment (or a variant of one) with its overrides."""

    label: str
    experiment: str
    overrides: list[str] = field(default_factory=list)
    skip: Optional[str] = None  # reason it is not run under this budget


def _compose(experiment: str, overrides: list[str]):
    return compose([f"experiment={experiment}", *overrides])


_MISSING = object()


def applicable(cfg, overrides: tuple[str, ...] | list[str]) -> list[str]:
    """The budget overrides that apply to the composed ``cfg`` (see the syntax note above)."""
    from omegaconf import OmegaConf

    out = []
    for item in overrides:
        cap = "<=" in item and "=" not in item.replace("<=", "", 1)
        key, value = item.split("<=" if cap else "=", 1)
        if "." not in key or key.startswith("hydra."):
            out.append(item)
            continue
        current = OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False)
        if current is _MISSING:
            continue
        if cap:
            if current is None or (isinstance(current, int) and not isinstance(current, bool) and current > int(value)):
                out.append(f"{key}={value}")
        else:
            out.append(item)
    return out


def _matches(rule: Rule, name: str, cfg) -> bool:
    from omegaconf import OmegaConf

    if not fnmatch.fnmatchcase(name, rule.experiments):
        return False
    return all(OmegaConf.select(cfg, key, default=None) in values for key, values in rule.where)


def plan(budget: Budget, only: list[str] | None = None, extra: list[str] | None = None) -> tuple[list[Job],
                                                                                                 list[Experiment]]:
    """The jobs to run (``skip`` set where the budget leaves one out) and the experiments that
    are not the paper's (their first comment line does not name it)."""
    experiments = discover(only=only)
    paper = [e for e in experiments if PAPER_RE.search(e.description)]
    others = [e for e in experiments if e not in paper]
    names = {e.name for e in paper}
    labels = [(e.name, e.name, ()) for e in paper]
    labels += [(label, base, tuple(ov)) for label, (base, ov) in VARIANTS.items() if base in names]
    jobs = []
    for label, name, variant in sorted(labels):
        job = Job(label, name)
        try:
            cfg = _compose(name, list(variant))
        except Exception as exc:  # a broken experiment file is reported, never fatal
            job.skip = f"does not compose: {str(exc).splitlines()[0]}"
            jobs.append(job)
            continue
        if not budget.needs_files and "root" in cfg.data:
            job.skip = f"reads dataset files (data={cfg.data.name}): full budget"
        overrides = list(applicable(cfg, budget.overrides))
        for rule in budget.rules:
            if _matches(rule, name, cfg):
                overrides += applicable(cfg, rule.overrides)
        job.overrides = [*overrides, *variant, *applicable(cfg, extra or [])]
        jobs.append(job)
    return jobs, others


# ----------------------------------------------------------------------------------------------
# Running


def command(job: Job, budget: Budget, out_dir: Path, seeds: tuple[int, ...], threads: Optional[int],
            launcher: Optional[str]) -> list[str]:
    """The ``nodex train --multirun`` command line of one job."""
    cmd = [sys.executable, "-m", "nodex.cli", "train", "--multirun", f"experiment={job.experiment}",
           "seed=" + ",".join(str(s) for s in seeds), *job.overrides]
    if threads:
        cmd.append(f"trainer.num_threads={threads}")
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
    cmd += [f"hydra.sweep.dir={out_dir / job.label}", "hydra.sweep.subdir=seed${seed}"]
    return cmd


def _completed_seeds(label_dir: Path) -> set[int]:
    done = set()
    for path in label_dir.glob("*/result.json"):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if result.get("status") == "completed":
            done.add(int(result.get("seed", -1)))
    return done


def run_jobs(jobs: list[Job], budget: Budget, out_dir: Path, seeds: tuple[int, ...], n_parallel: int,
             launcher: Optional[str], resume: bool, timeout: Optional[float]) -> None:
    """Run every non-skipped job, ``n_parallel`` at a time, printing one line per finished job."""
    todo = [j for j in jobs if j.skip is None]
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, n_parallel)) if budget.set_threads else None
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads or 1))}
    width = max((len(j.label) for j in todo), default=10)
    counter = {"done": 0}

    def one(job: Job) -> None:
        label_dir = out_dir / job.label
        if resume and set(seeds) <= _completed_seeds(label_dir):
            counter["done"] += 1
            print(f"[{counter['done']:>3}/{len(todo)}] {job.label:<{width}}  already done (--resume)", flush=True)
            return
        label_dir.mkdir(parents=True, exist_ok=True)
        cmd = command(job, budget, out_dir, seeds, threads, launcher)
        started = time.perf_counter()
        with open(label_dir / "reproduce.log", "w") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        results = [json.loads(p.read_text()) for p in sorted(label_dir.glob("*/result.json"))]
        ok = sum(r.get("status") == "completed" for r in results)
        note = ""
        if ok < len(seeds):
            errors = [r.get("error") for r in results if r.get("status") != "completed" and r.get("error")]
            note = f"  exit {code}: {errors[0] if errors else 'see ' + str(label_dir / 'reproduce.log')}"
        counter["done"] += 1
        print(f"[{counter['done']:>3}/{len(todo)}] {job.label:<{width}}  {ok}/{len(seeds)} completed  "
              f"{time.perf_counter() - started:7.1f} s{note}", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, n_parallel)) as pool:
        list(pool.map(one, todo))


# ----------------------------------------------------------------------------------------------
# REPRODUCTION.md


def collect(jobs: list[Job], out_dir: Path) -> dict[str, Group]:
    """``{label: Group of its runs}`` for every job with run directories."""
    groups = {}
    for job in jobs:
        label_dir = out_dir / job.label
        runs: list[Run] = find_runs([label_dir]) if label_dir.exists() else []
        if runs:
            groups[job.label] = Group((job.label,), runs)
    return groups


def main_metric(group: Group) -> Optional[str]:
    names = [n for r in group.completed for n in (r.result.get("metrics") or {})]
    for name in MAIN_METRICS:
        if name in names:
            return name
    rest = [n for n in names if n.startswith("test/") and "loss" not in n and "nfe" not in n]
    return rest[0] if rest else None


def _stat_text(group: Group, metric: Optional[str]) -> str:
    return stat_cell(group.stat(metric) if metric else None)


def _job_status(jobs: list[Job], groups: dict[str, Group]) -> dict[str, str]:
    """``label -> ok | failed | not run[: why]`` for every planned job."""
    status: dict[str, str] = {}
    for job in jobs:
        g = groups.get(job.label)
        if job.skip:
            status[job.label] = f"not run: {job.skip}"
        elif g is None:
            status[job.label] = "not run"
        elif not g.completed:
            status[job.label] = "failed"
        else:
            status[job.label] = "ok"
    return status


def _claim_rows(groups: dict[str, Group], status: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """One markdown table per claim, and the tally of PASS / FAIL / not run checks."""

    def lookup(label: str, metric: str):
        g = groups.get(label)
        return g.stat(metric) if g is not None and status.get(label) == "ok" else None

    rows, tally = [], {"PASS": 0, "FAIL": 0, "not run": 0}
    for claim in CLAIMS:
        rows.append(f"\n### {claim.id}. {claim.text}\n\nSource: {claim.source}.\n")
        rows.append("| check | paper | ours | pass if | result |\n|---|---|---|---|---|")
        for check in claim.checks:
            ours, passed = check.evaluate(lookup)
            verdict = _verdict(check, passed, status)
            tally["PASS" if verdict == "PASS" else "FAIL" if verdict.startswith("FAIL") else "not run"] += 1
            rows.append(f"| {check.label} | {check.paper} | {ours} | {check.tolerance()} | {verdict} |")
    return rows, tally


def _host_text() -> tuple[str, str]:
    """``(host, versions)``: OS, CPU count and GPU; python and torch versions."""
    host = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
    try:
        import torch

        versions = f"python {platform.python_version()}, torch {torch.__version__}"
        if torch.cuda.is_available():
            host += ", GPU " + torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        versions = f"python {platform.python_version()}"
    return host, versions


def _run_rows(jobs: list[Job], groups: dict[str, Group], status: dict[str, str]) -> list[str]:
    """One row of the runs table per job."""
    lines = []
    for job in jobs:
        g = groups.get(job.label)
        if g is None:
            lines.append(f"| {job.label} | {status[job.label]} | | | | | | | |")
            continue
        metric = main_metric(g)
        pv = paper_value(job.label, metric) if metric else None
        ppar = paper_value(job.label, "params")
        lines.append(
            f"| {job.label} | {len(g.completed)}/{len(g.runs)} | {metric or '–'} | {_stat_text(g, metric)} | "
            f"{pv.text() if pv else ''} | {_stat_text(g, 'nfe_forward')} | {_stat_text(g, 'params')} | "
            f"{ppar.text() if ppar else ''} | {_stat_text(g, 'wall_time_s')} |"
        )
    return lines


def render_reproduction(jobs: list[Job], others: list[Experiment], groups: dict[str, Group], budget: Budget,
                        seeds: tuple[int, ...], argv: list[str], wall_s: Optional[float]) -> str:
    """The text of ``REPRODUCTION.md``."""
    status = _job_status(jobs, groups)
    rows, tally = _claim_rows(groups, status)
    host, versions = _host_text()
    cmd = "python scripts/reproduce.py " + shlex.join(argv)
    lines = [
        "# Reproduction of *Dissecting Neural ODEs* (Massaroli et al., NeurIPS 2020)",
        "",
        f"Budget **{budget.name}**: {budget.description}. Seeds: {', '.join(map(str, seeds))}.",
        "",
        f"Made with `{cmd}` on {_dt.date.today().isoformat()} ({host}; {versions})"
        + (f" in {wall_s / 60:.1f} min." if wall_s is not None else "."),
        "Claims: `shared/paper.md` §3, registry `nodex/paper/claims.py`; "
        "budgets: `nodex/paper/reproduce.py` (`BUDGETS`).",
        "",
        f"**{tally['PASS']} checks pass, {tally['FAIL']} fail, {tally['not run']} not run** (a claim's experiment "
        "may not exist yet or may be outside this budget).",
        "",
        "## Claims",
        *rows,
        "",
        "## Runs",
        "",
        "Mean ± sample std over the completed seeds; the paper's value where it reports one. "
        "Full tables: `nodex report DIR` on the run directories.",
        "",
        "| run | completed | main metric | ours | paper | NFE fwd / step | params | params (paper) | wall s / run |",
        "|---|---|---|---|---|---|---|---|---|",
        *_run_rows(jobs, groups, status),
    ]
    failed = [r for g in groups.values() for r in g.failed]
    if failed:
        lines += ["", f"## Failed runs ({len(failed)})", ""]
        lines += [f"- `{r.path}`: {r.status}: {r.result.get('error') or 'no error recorded'}" for r in failed]
    if others:
        lines += ["", "Not paper experiments (left out): " + ", ".join(e.name for e in others) + "."]
    return "\n".join(lines) + "\n"


def _verdict(check: Check, passed: Optional[bool], status: dict[str, str]) -> str:
    if passed is True:
        return "PASS"
    if passed is False:
        return "FAIL"
    labels = check.labels()
    failed = [label for label in labels if status.get(label) == "failed"]
    if failed:
        return f"FAIL (every run failed: {', '.join(failed)})"
    existing = {e.name for e in discover()}
    for label in labels:
        state = status.get(label)
        if state is None:
            exists = label.split("@", 1)[0] in existing
            return "not run: not selected (--only)" if exists else f"not run: no experiment {label} yet"
        if state != "ok":
            return state
    return "not run: metric not recorded"


# ----------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    """The ``scripts/reproduce.py`` command line."""
    parser = argparse.ArgumentParser(
        prog="reproduce",
        description="Run every paper experiment in configs/experiment/ with a budget and write REPRODUCTION.md "
                    "(each claim of the paper: its value, ours, pass/fail).",
    )
    parser.add_argument("--budget", choices=list(BUDGETS), default="smoke",
                        help="; ".join(f"{b.name}: {b.description}" for b in BUDGETS.values()))
    parser.add_argument("--only", default="",
                        help="comma-separated experiment names or patterns (e.g. 'reflection_*,annuli_vanilla')")
    parser.add_argument("--seeds", default="", help="comma-separated seeds (default: the budget's)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="experiments run at once (each gets cores/jobs torch threads)")
    parser.add_argument("--launcher", default=None,
                        help="Hydra launcher for each experiment's seeds (joblib, slurm, ray, submitit_local)")
    parser.add_argument("--out", default=None, help="run directory root (default: outputs/reproduce/BUDGET/DATE_TIME)")
    parser.add_argument("--report", default=None,
                        help="where to write the report (default: REPRODUCTION.md; smoke: OUT/REPRODUCTION.md)")
    parser.add_argument("--report-only", action="store_true",
                        help="do not run; rewrite the report from the runs under --out")
    parser.add_argument("--resume", action="store_true", help="skip experiments whose seeds all completed under --out")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per experiment before it is stopped")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument("overrides", nargs="*",
                        help="extra overrides for every experiment (applied where the key exists), "
                             "e.g. trainer.device=cuda")
    return parser


def reproduce_main(argv: list[str]) -> int:
    """``scripts/reproduce.py --budget smoke|cpu|full [--only PATTERNS] [--jobs N] ...``"""
    parser = _parser()
    args = parser.parse_args(argv)

    budget = BUDGETS[args.budget]
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip()) or budget.seeds
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    if args.report_only and not args.out:
        parser.error("--report-only needs --out DIR (the run directory root of an earlier reproduce)")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = Path(args.out or Path("outputs") / "reproduce" / budget.name / stamp)
    report_path = Path(args.report or (out_dir / "REPRODUCTION.md" if budget.name == "smoke" else "REPRODUCTION.md"))

    jobs, others = plan(budget, only, args.overrides)
    if not jobs:
        print(f"reproduce: no paper experiment matches --only {args.only}", file=sys.stderr)
        return 2
    runnable = [j for j in jobs if j.skip is None]
    print(f"reproduce: budget {budget.name}, seeds {','.join(map(str, seeds))}: {len(runnable)} runs of "
          f"{len(jobs)} ({len(jobs) - len(runnable)} outside this budget) -> {out_dir}", flush=True)
    if args.dry_run:
        for job in jobs:
            skipped = f"# {job.label}: skipped ({job.skip})"
            print(skipped if job.skip else shlex.join(command(job, budget, out_dir, seeds, None, args.launcher)))
        return 0
    started = time.perf_counter()
    if not args.report_only:
        run_jobs(jobs, budget, out_dir, seeds, args.jobs, args.launcher, args.resume, args.timeout)
    wall = None if args.report_only else time.perf_counter() - started
    groups = collect(jobs, out_dir)
    text = render_reproduction(jobs, others, groups, budget, seeds, argv, wall)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text)
    failed = sum(len(g.failed) for g in groups.values())
    print(f"reproduce: wrote {report_path} ({sum(len(g.runs) for g in groups.values())} runs, {failed} failed)")
    return 0 if failed == 0 else 1
