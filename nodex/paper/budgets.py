"""The reproduction budgets, ``configs/budget/NAME.yaml``: how much each paper experiment is trained
under ``nodex reproduce --budget NAME`` (plain ``key=value`` overrides, applied where an experiment's
config has the key, and the seeds); ``rules`` add overrides where config values match."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nodex.config import CONFIG_DIR

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
