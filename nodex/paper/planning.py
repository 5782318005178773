"""Planning a reproduction: the budgets (``configs/budget/NAME.yaml``: seeds, and plain ``key=value``
overrides applied where an experiment's config has the key), the runs a budget makes (:func:`plan`)
and their ``nodex train`` command lines (:func:`commands`). A Neural ODE experiment trains its seeds
as one seed ensemble per run of consecutive seeds (``LABEL/seeds<S>-<S+K-1>/member-k``; under nodex's adaptive
solvers each member takes its own steps; ``--compare`` runs some both ways to show it); a CNF, and
every experiment under ``--separate``, runs ``nodex train --multirun seed=...`` (``LABEL/seed<S>``).
"""

from __future__ import annotations

import fnmatch
import itertools
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from nodex.config import CONFIG_DIR, compose
from nodex.paper.claims import VARIANTS
from nodex.paper.experiments import Experiment, discover

BUDGET_DIR = CONFIG_DIR / "budget"


@dataclass(frozen=True)
class Rule:
    """Extra overrides for the experiments whose config values match ``where`` (key -> allowed values)."""

    overrides: tuple[str, ...]
    where: tuple[tuple[str, tuple[Any, ...]], ...] = ()


@dataclass(frozen=True)
class Budget:
    """One budget file: its seeds, overrides and how its seeds run."""

    name: str
    description: str
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    needs_files: bool = False   # run the experiments that read dataset files (data.root)?
    set_threads: bool = True    # pass trainer.num_threads = cores / jobs
    compare: tuple[str, ...] = ()  # experiments also run as separate seeds (ensemble vs separate)
    separate: tuple[str, ...] = ()  # experiments whose seeds run separately under this budget
    seconds_per_seed: tuple[tuple[str, float], ...] = ()  # measured wall time of a separate run


def load_budget(path: Path) -> Budget:
    """The budget in ``path`` (a ``configs/budget/*.yaml`` file)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    rules = tuple(Rule(tuple(r.get("overrides", ())), tuple((k, tuple(v)) for k, v in r.get("where", {}).items()))
                  for r in data.get("rules") or ())
    return Budget(
        name=Path(path).stem, description=" ".join(str(data["description"]).split()),
        seeds=tuple(int(s) for s in data["seeds"]), overrides=tuple(data.get("overrides") or ()), rules=rules,
        needs_files=bool(data.get("needs_files", False)), set_threads=bool(data.get("set_threads", True)),
        compare=tuple(data.get("compare") or ()), separate=tuple(data.get("separate") or ()),
        seconds_per_seed=tuple((str(k), float(v)) for k, v in (data.get("seconds_per_seed") or {}).items()),
    )


BUDGETS: dict[str, Budget] = {p.stem: load_budget(p) for p in sorted(BUDGET_DIR.glob("*.yaml"))}


PAPER_RE = re.compile(r"\bpaper\b", re.IGNORECASE)
SEPARATE = "@separate"  # label suffix: the same experiment run as separate seeds (--compare)
# Start order: the longest first (for --jobs packing), the 5k-MNIST stand-ins last; others between.
RUN_ORDER = (("annuli_*", 0), ("mnist5k_*", 2))
_MISSING = object()


@dataclass
class Job:
    """One run label: an experiment (or a variant of one) with its overrides."""

    label: str
    experiment: str
    overrides: list[str] = field(default_factory=list)
    skip: Optional[str] = None  # reason it is not run under this budget
    ensemble: bool = False  # seeds as one trainer.ensemble job (model.kind=neural_ode)


def applicable(cfg, overrides: tuple[str, ...] | list[str]) -> list[str]:
    """The ``key=value`` overrides that apply to the composed ``cfg``: those whose key it has,
    and every config-group choice (a key without a dot) and ``hydra.`` setting."""
    from omegaconf import OmegaConf

    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "." not in key or key.startswith("hydra.") or \
                OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False) is not _MISSING:
            out.append(item)
    return out


def _job(label: str, name: str, variant: tuple[str, ...], budget: Budget, extra: list[str],
         separate: bool) -> Job:
    """The job of one run label under ``budget`` (``skip`` says why it is not run)."""
    from omegaconf import OmegaConf

    job = Job(label, name)
    try:
        cfg = compose([f"experiment={name}", *variant])
    except Exception as exc:  # a broken experiment file is reported, never fatal
        job.skip = f"does not compose: {str(exc).splitlines()[0]}"
        return job
    if not budget.needs_files and "root" in cfg.data:
        job.skip = f"reads dataset files (data={cfg.data.name}): full budget"
    overrides = applicable(cfg, budget.overrides)
    for rule in budget.rules:
        if all(OmegaConf.select(cfg, key, default=None) in values for key, values in rule.where):
            overrides += applicable(cfg, rule.overrides)
    job.overrides = [*overrides, *variant, *applicable(cfg, extra)]
    job.ensemble = (not separate and cfg.model.get("kind", "neural_ode") == "neural_ode"
                    and not any(fnmatch.fnmatchcase(name, pat) for pat in budget.separate))
    return job


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
        job = _job(label, name, variant, budget, extra or [], separate)
        jobs.append(job)
        if job.ensemble and job.skip is None and any(fnmatch.fnmatchcase(label, pat) for pat in compare):
            jobs.append(Job(label + SEPARATE, name, list(job.overrides)))
    return jobs, others


def run_order(jobs: list[Job]) -> list[Job]:
    """``jobs`` in the order they are started (:data:`RUN_ORDER`, then by label)."""
    return sorted(jobs, key=lambda j: (next((r for pat, r in RUN_ORDER if fnmatch.fnmatchcase(j.label, pat)), 1),
                                       j.label))


def seed_blocks(seeds: tuple[int, ...] | list[int]) -> list[tuple[int, ...]]:
    """``seeds`` (sorted, without repeats) cut into runs of consecutive seeds: one ensemble each
    (``trainer.ensemble=K`` trains seeds ``S..S+K-1``)."""
    runs = itertools.groupby(enumerate(sorted(set(seeds))), key=lambda pair: pair[1] - pair[0])
    return [tuple(seed for _, seed in run) for _, run in runs]


def block_dir(block: tuple[int, ...]) -> str:
    """An ensemble job's directory name under its label: ``seeds0-4`` (``seed3`` for one seed)."""
    return f"seed{block[0]}" if len(block) == 1 else f"seeds{block[0]}-{block[-1]}"


def commands(job: Job, out_dir: Path, seeds: tuple[int, ...], threads: Optional[int],
             launcher: Optional[str]) -> list[tuple[tuple[int, ...], list[str]]]:
    """``[(seeds, command line)]`` of one job: ``nodex train ... trainer.ensemble=K`` per block of
    consecutive seeds, or one ``nodex train --multirun seed=...``."""
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


def compare_cost(jobs: list[Job], budget: Budget, n_seeds: int) -> str:
    """What the ``@separate`` jobs add (jobs, runs, time from ``seconds_per_seed``) for ``--dry-run``; or ``""``."""
    extra = [j for j in jobs if j.label.endswith(SEPARATE) and j.skip is None]
    if not extra:
        return ""
    known = dict(budget.seconds_per_seed)
    timed = [known[j.experiment] * n_seeds for j in extra if j.experiment in known]
    unknown = "".join(f", {j.label} not timed" for j in extra if j.experiment not in known)
    est = f"about {sum(timed) / 60:.0f} min on one core (configs/budget/{budget.name}.yaml: seconds_per_seed){unknown}"
    return (f"--compare adds {len(extra)} jobs ({len(extra) * n_seeds} separate runs: "
            f"{', '.join(j.label for j in extra)}), {est}; --compare '' leaves them out")
