"""``nodex reproduce`` / ``scripts/reproduce.py``: run the paper's experiments with a budget and
write ``REPRODUCTION.md`` (each claim of ``shared/paper.md`` §3: the paper's value, ours, and
pass/fail against a stated tolerance).

The experiments are discovered from ``configs/experiment/`` (every file whose description names
the paper); the claims and the extra variant runs come from :mod:`nodex.paper.claims`; the
budgets are the :data:`BUDGETS` table below, the one place that says how much each experiment
is trained under ``smoke``, ``cpu`` and ``full``. Each experiment runs in its own subprocess
(``--jobs N`` of them at once), so a crash in one never stops the others, and every run
directory is an ordinary nodex run (``nodex report`` reads it):

- a Neural ODE experiment trains its seeds as one seed ensemble, ``nodex train experiment=NAME
  seed=S trainer.ensemble=K`` per run of consecutive seeds (``LABEL/seeds<S>-<S+K-1>/member-k``);
  with fixed-step solvers each member is its separate run bit for bit, with adaptive solvers the
  members share one step-size sequence (``--compare`` runs some experiments both ways);
- a model that cannot be stacked (CNFs) runs ``nodex train --multirun seed=...``
  (``LABEL/seed<S>``), as does every experiment under ``--separate``.

Each claim's check is judged per seed (:meth:`~nodex.paper.claims.Check.judge_seeds`) and holds
when the fraction of seeds its claim requires holds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from nodex.config import compose
from nodex.paper.claims import (
    CLAIMS, VARIANTS, Check, Claim, Lookup, Rate, SeedOutcome, Stat, Values, paper_value, rate_of,
)
from nodex.paper.experiments import Experiment, audit, discover
from nodex.paper.figures import FigureSink, clear
from nodex.paper.probes import PROBES, probe
from nodex.paper.report import Group, Run, find_runs, fmt, metric_value, stat_cell

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
    compare: tuple[str, ...] = ()  # experiments also run as separate seeds (ensemble vs separate)
    separate: tuple[str, ...] = ()  # experiments whose seeds run separately under this budget (memory)


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
        "stand-ins of the image table) with its own CPU-sized budget as written in its config file, five seeds "
        "(one seed-ensemble job per Neural ODE experiment; CNFs and the image stand-ins as separate seeds)",
        seeds=(0, 1, 2, 3, 4),
        compare=("reflection_*", "annuli_data_control"),
        # A 5-member ensemble of the 28x28 conv models holds every member's solver graph at once
        # (autograd): it outgrew a 23 GB machine shared with other jobs; separate seeds fit. The image
        # stand-ins' claims compare forward NFE, which the members of an adaptive-solver ensemble share
        # (one step-size sequence): per-seed NFE needs separate runs.
        separate=("mnist5k_*", "digits_*"),
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
    ensemble: bool = False  # seeds as one trainer.ensemble job (model.kind=neural_ode)


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


SEPARATE = "@separate"  # label suffix: the same experiment run as separate seeds (--compare)
# Start order: the longest first (for --jobs packing), the 5k-MNIST stand-ins last; others between.
RUN_ORDER = (("annuli_*", 0), ("mnist5k_*", 2))


def plan(budget: Budget, only: list[str] | None = None, extra: list[str] | None = None,
         compare: tuple[str, ...] | list[str] = (), separate: bool = False) -> tuple[list[Job], list[Experiment]]:
    """The jobs to run (``skip`` set where the budget leaves one out) and the experiments that
    are not the paper's (their first comment line does not name it). ``compare``: experiment
    patterns also run as separate seeds (label ``NAME@separate``); ``separate``: no ensembles."""
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
        job.ensemble = (not separate and cfg.model.get("kind", "neural_ode") == "neural_ode"
                        and not any(fnmatch.fnmatchcase(name, pat) for pat in budget.separate))
        jobs.append(job)
        if job.ensemble and job.skip is None and any(fnmatch.fnmatchcase(label, pat) for pat in compare):
            jobs.append(Job(label + SEPARATE, name, list(job.overrides)))
    return jobs, others


def run_order(jobs: list[Job]) -> list[Job]:
    """``jobs`` in the order they are started (:data:`RUN_ORDER`, then by label)."""
    def rank(job: Job) -> int:
        return next((r for pat, r in RUN_ORDER if fnmatch.fnmatchcase(job.label, pat)), 1)

    return sorted(jobs, key=lambda j: (rank(j), j.label))


# ----------------------------------------------------------------------------------------------
# Running


def seed_blocks(seeds: tuple[int, ...] | list[int]) -> list[tuple[int, ...]]:
    """``seeds`` (sorted, without repeats) cut into runs of consecutive seeds: one ensemble each
    (``trainer.ensemble=K`` trains seeds ``S..S+K-1``)."""
    blocks: list[list[int]] = []
    for s in sorted(set(seeds)):
        if blocks and s == blocks[-1][-1] + 1:
            blocks[-1].append(s)
        else:
            blocks.append([s])
    return [tuple(b) for b in blocks]


def block_dir(block: tuple[int, ...]) -> str:
    """An ensemble job's directory name under its label: ``seeds0-4`` (``seed3`` for one seed)."""
    return f"seed{block[0]}" if len(block) == 1 else f"seeds{block[0]}-{block[-1]}"


def commands(job: Job, out_dir: Path, seeds: tuple[int, ...], threads: Optional[int],
             launcher: Optional[str]) -> list[tuple[tuple[int, ...], list[str]]]:
    """``[(seeds, command line)]`` of one job: one ``nodex train ... trainer.ensemble=K`` per block
    of consecutive seeds, or one ``nodex train --multirun seed=...`` for all seeds."""
    tail = [f"trainer.num_threads={threads}"] if threads else []
    base = [sys.executable, "-m", "nodex.cli", "train"]
    if job.ensemble:
        out = []
        for block in seed_blocks(seeds):
            ens = [f"trainer.ensemble={len(block)}"] if len(block) > 1 else []
            out.append((block, [*base, f"experiment={job.experiment}", f"seed={block[0]}", *ens, *job.overrides,
                                *tail, f"hydra.run.dir={out_dir / job.label / block_dir(block)}"]))
        return out
    cmd = [*base, "--multirun", f"experiment={job.experiment}", "seed=" + ",".join(str(s) for s in seeds),
           *job.overrides, *tail]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
    cmd += [f"hydra.sweep.dir={out_dir / job.label}", "hydra.sweep.subdir=seed${seed}"]
    return [(tuple(seeds), cmd)]


def _results(label_dir: Path) -> list[dict[str, Any]]:
    """Every ``result.json`` under a label's directory (an ensemble's are its members')."""
    out = []
    for path in sorted(label_dir.rglob("result.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _completed_seeds(label_dir: Path) -> set[int]:
    return {int(r.get("seed", -1)) for r in _results(label_dir) if r.get("status") == "completed"}


def _set_aside(label_dir: Path, dest: Path) -> None:
    """Move a label's run folders that hold no completed run (an attempt that failed or was
    stopped) to ``dest/LABEL/`` before ``--resume`` runs their seeds again: kept, not counted."""
    if not label_dir.is_dir():
        return
    for sub in sorted(p for p in label_dir.iterdir() if p.is_dir()):
        results = _results(sub)
        if any(r.get("status") == "completed" for r in results) or not (results or (sub / ".hydra").is_dir()):
            continue
        target = dest / label_dir.name / f"{sub.name}-{_dt.datetime.now():%H%M%S}"
        target.parent.mkdir(parents=True, exist_ok=True)
        sub.rename(target)


def _run_one(job: Job, out_dir: Path, seeds: tuple[int, ...], threads: Optional[int],
             launcher: Optional[str], resume: bool, timeout: Optional[float], env: dict[str, str]) -> str:
    """Run one job's commands (those whose seeds are not all done under ``--resume``); returns the
    progress line's tail."""
    label_dir = out_dir / job.label
    done = _completed_seeds(label_dir) if resume else set()
    missing = tuple(s for s in seeds if s not in done)
    if not missing:
        return "already done (--resume)"
    if resume:
        _set_aside(label_dir, out_dir / ".failed")
    todo = commands(job, out_dir, missing, threads, launcher)
    label_dir.mkdir(parents=True, exist_ok=True)
    started, code = time.perf_counter(), 0
    with open(label_dir / "reproduce.log", "a" if resume else "w") as log:
        for _, cmd in todo:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            try:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
    results = [r for r in _results(label_dir) if int(r.get("seed", -1)) in seeds]
    ok = len({int(r["seed"]) for r in results if r.get("status") == "completed"})
    note = ""
    if ok < len(seeds):
        errors = [r.get("error") for r in results if r.get("status") != "completed" and r.get("error")]
        note = f"  exit {code}: {errors[0] if errors else 'see ' + str(label_dir / 'reproduce.log')}"
    kind = f"ensemble of {len(seeds)}" if job.ensemble and len(seeds) > 1 else "separate seeds"
    return f"{ok}/{len(seeds)} completed  {time.perf_counter() - started:7.1f} s  ({kind}){note}"


def run_jobs(jobs: list[Job], budget: Budget, out_dir: Path, seeds: tuple[int, ...], n_parallel: int,
             launcher: Optional[str], resume: bool, timeout: Optional[float], threads: Optional[int] = None) -> None:
    """Run every non-skipped job, ``n_parallel`` at a time, printing one line per finished job;
    each gets ``threads`` torch threads (default: cores / ``n_parallel`` where the budget sets them)."""
    todo = run_order([j for j in jobs if j.skip is None])
    cores = os.cpu_count() or 1
    if threads is None and budget.set_threads:
        threads = max(1, cores // max(1, n_parallel))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads or 1))}
    width = max((len(j.label) for j in todo), default=10)
    counter = {"done": 0}

    def one(job: Job) -> None:
        line = _run_one(job, out_dir, seeds, threads, launcher, resume, timeout, env)
        counter["done"] += 1
        print(f"[{counter['done']:>3}/{len(todo)}] {job.label:<{width}}  {line}", flush=True)

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
        add_probes(job.experiment, runs)
        if runs:
            groups[job.label] = Group((job.label,), runs)
    return groups


def add_probes(experiment: str, runs: list[Run]) -> None:
    """Each completed run of ``experiment`` gets the probes its name matches (:data:`PROBES`) as
    ``probe/NAME`` metrics (in memory; measured once, then read from the run's ``probes.json``)."""
    for pattern, (name, fn) in PROBES.items():
        if not fnmatch.fnmatchcase(experiment, pattern):
            continue
        for run in runs:
            if run.ok and (value := probe(run.path, name, fn)) is not None:
                run.result.setdefault("metrics", {})[f"probe/{name}"] = value


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


def seed_values(groups: dict[str, Group], status: dict[str, str]) -> Values:
    """``(label, metric) -> {seed: value}`` over a label's completed runs (``None``: none)."""

    def values(label: str, metric: str) -> Optional[dict[int, float]]:
        g = groups.get(label)
        if g is None or status.get(label) != "ok":
            return None
        out = {seed: v for seed, run in g.by_seed() if (v := metric_value(run, metric)) is not None}
        return out or None

    return values


def _mean_lookup(values: Values) -> Lookup:
    def lookup(label: str, metric: str) -> Optional[Stat]:
        got = values(label, metric)
        if not got:
            return None
        v = list(got.values())
        return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)

    return lookup


def _per_seed_cell(check: Check, outcomes: list[SeedOutcome]) -> str:
    """``0: 1, 6: 0.489 ✗`` (the checked run's value per seed; ✗ where the seed fails)."""
    def one(o: SeedOutcome) -> str:
        shown = ("✓" if o.passed else "✗") if check.op == "order" else (
            o.text if check.op in ("lt_run", "gt_run") else fmt(o.value))
        return f"{o.seed}: {shown}" + ("" if o.passed or check.op == "order" else " ✗")

    return ", ".join(one(o) for o in outcomes)


def _summary_cell(check: Check, outcomes: list[SeedOutcome], values: Values) -> str:
    """Median, worst seed, mean ± std (an ``order`` check: the ranking of the means, worst seed)."""
    worst = min(outcomes, key=lambda o: o.margin)
    if check.op == "order":
        return f"means: {check.evaluate(_mean_lookup(values))[0]}; worst seed {worst.seed}"
    v = [o.value for o in outcomes]
    std = f" ± {statistics.stdev(v):.2g}" if len(v) > 1 else ""
    worst_text = (f"closest seed {worst.seed} ({worst.text})" if check.op in ("lt_run", "gt_run")
                  else f"worst {fmt(worst.value)} (seed {worst.seed})")
    return f"median {fmt(statistics.median(v))}, {worst_text}; mean {fmt(statistics.fmean(v))}{std}"


@dataclass
class CheckResult:
    """One check of a claim judged over seeds (``rate`` None: not run)."""

    check: Check
    verdict: str
    row: str
    rate: Optional[Rate] = None
    worst_failing: Optional[int] = None  # the worst seed, when some seed fails


def judge(claim: Claim, check: Check, values: Values, status: dict[str, str]) -> CheckResult:
    """``check`` of ``claim`` over the seeds of its runs, with its table row."""
    outcomes = check.judge_seeds(values)
    need = claim.rate_needed(check)
    if not outcomes:
        verdict = _not_run_verdict(check, status)
        crit = Rate(0, 0, need).share
        return CheckResult(check, verdict, f"| {check.label} | {check.paper} | {check.tolerance()} | – | "
                                           f"not run | | {crit} | {verdict} |")
    rate = rate_of(outcomes, need)
    verdict = "PASS" if rate.holds else "FAIL"
    failing = [o for o in outcomes if not o.passed]
    # the worst seed's figure is worth showing when the check fails on some seeds only
    worst = min(failing, key=lambda o: o.margin).seed if 0 < len(failing) < len(outcomes) else None
    row = (f"| {check.label} | {check.paper} | {check.tolerance()} | **{rate.k}/{rate.n}** | "
           f"{_per_seed_cell(check, outcomes)} | {_summary_cell(check, outcomes, values)} | {rate.criterion()} | "
           f"{verdict} |")
    return CheckResult(check, verdict, row, rate, worst)


CHECK_HEADER = ("| check | paper | pass if (per seed) | seeds that hold | per seed | summary | criterion | result |\n"
                "|---|---|---|---|---|---|---|---|")


def _claim_verdict(results: list[CheckResult]) -> str:
    if any(r.verdict.startswith("FAIL") for r in results):
        return "FAIL"
    return "PASS" if results and all(r.verdict == "PASS" for r in results) else "not run"


def _claim_rows(groups: dict[str, Group], status: dict[str, str],
                figures: Optional[FigureSink] = None) -> tuple[list[str], dict[str, int], list[str]]:
    """One section per claim (its table over seeds, then its figures), the tally of checks, and
    the summary table's rows."""
    values = seed_values(groups, status)
    rows, summary, tally = [], [], {"PASS": 0, "FAIL": 0, "not run": 0}
    for claim in CLAIMS:
        results = [judge(claim, check, values, status) for check in claim.checks]
        for r in results:
            tally["PASS" if r.verdict == "PASS" else "FAIL" if r.verdict.startswith("FAIL") else "not run"] += 1
        rates = "; ".join(f"{r.check.label}: {r.rate.k}/{r.rate.n}" for r in results if r.rate)
        summary.append(f"| [{claim.id}](#claim-{claim.id.replace('.', '-')}) | {_claim_verdict(results)} | "
                       f"{rates or 'not run'} |")
        rows.append(f'\n<a id="claim-{claim.id.replace(".", "-")}"></a>\n\n### {claim.id}. {claim.text}\n')
        rows.append(f"Source: {claim.source}. Criterion: {claim.why_rate}.\n")
        rows += [CHECK_HEADER, *(r.row for r in results)]
        if claim.note:
            rows += ["", claim.note]
        if figures is not None:
            rows += figures.section(claim, results, groups)
    return rows, tally, summary


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


def _seed_cell(group: Group, metric: Optional[str]) -> str:
    """``0: 1, 1: 0.9998, ...``: the metric of each completed seed."""
    if not metric:
        return ""
    pairs = [(seed, metric_value(run, metric)) for seed, run in group.by_seed()]
    return ", ".join(f"{s}: {fmt(v)}" for s, v in pairs if v is not None)


def _run_rows(jobs: list[Job], groups: dict[str, Group], status: dict[str, str]) -> list[str]:
    """One row of the runs table per job."""
    lines = []
    for job in jobs:
        g = groups.get(job.label)
        if g is None:
            lines.append(f"| {job.label} | {status[job.label]} | | | | | | | | | |")
            continue
        metric = main_metric(g)
        pv = paper_value(job.label, metric) if metric else None
        ppar = paper_value(job.label, "params")
        how = "ensemble" if any(r.result.get("ensemble_member") for r in g.runs) else "separate"
        lines.append(
            f"| {job.label} | {len(g.completed)}/{len(g.runs)} | {how} | {metric or '–'} | {_seed_cell(g, metric)} | "
            f"{_stat_text(g, metric)} | {pv.text() if pv else ''} | {_stat_text(g, 'nfe_forward')} | "
            f"{_stat_text(g, 'params')} | {ppar.text() if ppar else ''} | {_stat_text(g, 'wall_time_s')} |"
        )
    return lines


def _compare_rows(jobs: list[Job], groups: dict[str, Group], status: dict[str, str]) -> list[str]:
    """Ensemble vs separate runs for each ``NAME@separate`` job: per-seed main metric and NFE, and
    the rate of every check that reads ``NAME`` judged on either."""
    pairs = [(j.label[: -len(SEPARATE)], j.label) for j in jobs if j.label.endswith(SEPARATE)]
    pairs = [(a, b) for a, b in pairs if status.get(a) == "ok" and status.get(b) == "ok"]
    if not pairs:
        return []
    values = seed_values(groups, status)
    lines = ["", "## Seed ensembles vs separate runs", "",
             "The seeds of a Neural ODE experiment train as one `trainer.ensemble=K` job. With a fixed-step solver "
             "each member is its separate run bit for bit; with an adaptive solver (dopri5 here) the members share "
             "one step-size sequence (the error norm is taken over the stacked state), so each member takes the "
             "steps of the hardest one: its trajectory and gradients differ within the solver tolerance, its NFE "
             "is the ensemble's. These experiments were also run as separate seeds; the claims' rates on either:",
             "", "| run | metric | per seed: ensemble | per seed: separate | NFE fwd: ensemble / separate |",
             "|---|---|---|---|---|"]
    for base, sep in pairs:
        metric = main_metric(groups[base])
        lines.append(f"| {base} | {metric} | {_seed_cell(groups[base], metric)} | {_seed_cell(groups[sep], metric)} | "
                     f"{_stat_text(groups[base], 'nfe_forward')} / {_stat_text(groups[sep], 'nfe_forward')} |")
    swapped = {base: sep for base, sep in pairs}

    def separate_values(label: str, metric: str) -> Optional[dict[int, float]]:
        return values(swapped.get(label, label), metric)

    lines += ["", "| claim | check | seeds that hold: ensemble | separate runs |", "|---|---|---|---|"]
    for claim in CLAIMS:
        for check in claim.checks:
            if not set(check.labels()) & set(swapped):
                continue
            got = [check.judge_seeds(v) for v in (values, separate_values)]
            cells = [f"{sum(o.passed for o in g)}/{len(g)}" if g else "not run" for g in got]
            lines.append(f"| {claim.id} | {check.label} | {cells[0]} | {cells[1]} |")
    return lines


def _audit_rows(jobs: list[Job]) -> list[str]:
    """The config audit: each experiment's ``Audit`` header paragraph (settings vs the authors')."""
    paths = {e.name: e.path for e in discover()}
    rows = [(name, audit(paths[name])) for name in sorted({j.experiment for j in jobs}) if name in paths]
    if not rows:
        return []
    return ["", "## Settings vs the paper (config audit)", "",
            "Each experiment's header comment (`configs/experiment/NAME.yaml`) records its audit against the "
            "authors' settings in `shared/paper.md`: deviations fixed, and deviations kept with the reason.", "",
            "| experiment | audit |", "|---|---|",
            *(f"| {name} | {text.removeprefix('Audit').lstrip(' :') or 'not audited'} |" for name, text in rows)]


def render_reproduction(jobs: list[Job], others: list[Experiment], groups: dict[str, Group], budget: Budget,
                        seeds: tuple[int, ...], argv: list[str], wall_s: Optional[float],
                        figures: Optional[FigureSink] = None, commands: Optional[list[str]] = None) -> str:
    """The text of ``REPRODUCTION.md`` (``commands``: the invocations that made the runs; default:
    ``argv``'s)."""
    status = _job_status(jobs, groups)
    rows, tally, summary = _claim_rows(groups, status, figures)
    host, versions = _host_text()
    commands = commands or ["python scripts/reproduce.py " + shlex.join(argv)]
    first = commands[0].split("  #")[0]  # a recorded command may carry a note after "  #"
    made = (f"`{first}`" if len(commands) == 1 else
            f"`{first}` and {len(commands) - 1} more invocations on the same run folder (listed below)")
    lines = [
        "# Reproduction of *Dissecting Neural ODEs* (Massaroli et al., NeurIPS 2020)",
        "",
        f"Budget **{budget.name}**: {budget.description}. Seeds: {', '.join(map(str, seeds))}.",
        "",
        f"Made with {made} on {_dt.date.today().isoformat()} ({host}; {versions})"
        + (f" in {wall_s / 60:.1f} min of wall time." if wall_s is not None else "."),
        "Claims: `shared/paper.md` §3, registry `nodex/paper/claims.py`; "
        "budgets: `nodex/paper/reproduce.py` (`BUDGETS`).",
        "",
        "Every check is judged on each seed alone (runs paired by seed) and holds when at least the fraction of "
        "seeds its claim states holds (*criterion*); *summary* gives the median, the worst seed and mean ± sample "
        "std over seeds.",
        "",
        f"**{tally['PASS']} checks pass, {tally['FAIL']} fail, {tally['not run']} not run** (a claim's experiment "
        "may not exist yet or may be outside this budget).",
        "",
        "| claim | result | seeds that hold, per check |",
        "|---|---|---|",
        *summary,
        "",
        "## Claims",
        *rows,
        *_compare_rows(jobs, groups, status),
        "",
        "## Runs",
        "",
        "Per seed and mean ± sample std over the completed seeds; the paper's value where it reports one. "
        "Full tables: `nodex report DIR` on the run directories.",
        "",
        "| run | completed | seeds as | main metric | per seed | ours | paper | NFE fwd / step | params | "
        "params (paper) | wall s / run |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *_run_rows(jobs, groups, status),
    ]
    lines += _audit_rows(jobs)
    if len(commands) > 1:
        lines += ["", f"<details><summary>The {len(commands)} invocations that made the runs</summary>", "",
                  *(f"{i}. `{c}`" for i, c in enumerate(commands, 1)), "", "</details>"]
    failed = [r for g in groups.values() for r in g.failed]
    if failed:
        lines += ["", f"## Failed runs ({len(failed)})", ""]
        lines += [f"- `{r.path}`: {r.status}: {r.result.get('error') or 'no error recorded'}" for r in failed]
    if others:
        lines += ["", "Not paper experiments (left out): " + ", ".join(e.name for e in others) + "."]
    return "\n".join(lines) + "\n"


def _not_run_verdict(check: Check, status: dict[str, str]) -> str:
    """Why ``check`` has no seed to judge: its runs failed, were not selected, or did not record the metric."""
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
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per experiment (default: cores / jobs; 1 on a machine shared with others)")
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
    parser.add_argument("--separate", action="store_true",
                        help="train every seed as its own run (default: one trainer.ensemble job per experiment "
                             "where the model allows it)")
    parser.add_argument("--compare", default=None,
                        help="comma-separated experiment patterns also run as separate seeds, to compare with "
                             "their ensemble (default: the budget's; '' for none)")
    parser.add_argument("--figures", default=None,
                        help="folder for the page's figures (default: docs/reproduction beside the report)")
    parser.add_argument("overrides", nargs="*",
                        help="extra overrides for every experiment (applied where the key exists), "
                             "e.g. trainer.device=cuda")
    return parser


def _add_wall(out_dir: Path, span: Optional[tuple[float, float]], command: str = "") -> Optional[float]:
    """The run's wall time so far: ``span`` (start, end as epoch seconds) added to ``OUT/wall.json``,
    and the length of the union of every span recorded there (runs resumed with ``--resume``, or
    run side by side with ``--only``, add up without counting an overlap twice); ``None`` when
    nothing was ever run there. ``command`` (the invocation) is recorded beside its span."""
    path = out_dir / "wall.json"
    try:
        saved = json.loads(path.read_text())
        spans = [tuple(map(float, s)) for s in saved["spans"]]
        commands = [str(c) for c in saved.get("commands", [])]
    except (OSError, ValueError, KeyError, TypeError):
        spans, commands = [], []
    if span is not None:
        spans.append(span)
        commands.append(command)
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"spans": spans, "commands": commands}, indent=1))
    if not spans:
        return None
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _commands(out_dir: Path) -> list[str]:
    """The invocations recorded in ``OUT/wall.json`` (each run, resumed or side by side)."""
    try:
        return [c for c in json.loads((out_dir / "wall.json").read_text()).get("commands", []) if c]
    except (OSError, ValueError, AttributeError):
        return []


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
        for job in jobs:
            skipped = f"# {job.label}: skipped ({job.skip})"
            if job.skip:
                print(skipped)
            for _, cmd in ([] if job.skip else commands(job, out_dir, seeds, None, args.launcher)):
                print(shlex.join(cmd))
        return 0
    started = time.time()
    if not args.report_only:
        run_jobs(jobs, budget, out_dir, seeds, args.jobs, args.launcher, args.resume, args.timeout, args.threads)
    this = "python scripts/reproduce.py " + shlex.join(argv)
    wall = _add_wall(out_dir, None if args.report_only else (started, time.time()), this)
    groups = collect(jobs, out_dir)
    fig_dir = Path(args.figures) if args.figures else report_path.parent / "docs" / "reproduction"
    clear(fig_dir)
    sink = FigureSink(fig_dir, os.path.relpath(fig_dir, report_path.parent))
    text = render_reproduction(jobs, others, groups, budget, seeds, argv, wall, sink, _commands(out_dir) or [this])
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text)
    failed = sum(len(g.failed) for g in groups.values())
    print(f"reproduce: wrote {report_path} ({sum(len(g.runs) for g in groups.values())} runs, {failed} failed)")
    return 0 if failed == 0 else 1
