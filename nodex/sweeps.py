"""Sweeps on Hydra's launchers and sweepers: plugin checks and the end-of-sweep summary.

- :func:`missing_plugin` turns ``hydra/launcher=ray`` (or an Optuna search) without its plugin
  installed into one line naming the extra to install, before Hydra composes anything.
- :class:`SweepSummary` is a Hydra callback (``configs/common/hydra.yaml``): at the end of a
  multirun it reads every job's ``result.json`` in the sweep dir, prints one line with the
  counts, and leaves a :class:`SweepOutcome` (read from those files) that the CLI turns into
  exit 1 with the same message whichever launcher ran the jobs (a job in a joblib/Ray/Slurm
  worker cannot report back any other way). Failed jobs never stop the sweep; their ``result.json`` says why.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback

log = logging.getLogger("nodex")

# option of hydra/launcher or hydra/sweeper -> (plugin module, nodex extra)
PLUGINS = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "ray"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("hparams_search", "*"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
}

# configs/hydra/launcher/{joblib,submitit_local,ray}.yaml share their names with the plugins'
# own configs on purpose (`hydra/launcher=joblib` just works), and Hydra 1.3 then validates
# them against the plugin's schema and says so in a deprecation warning on every run.
SCHEMA_MATCH_WARNING = r"(?s).*hydra/launcher/.* is validated against ConfigStore schema with the same name"


def quiet_schema_warning() -> None:
    """Silence Hydra's warning about our launcher YAMLs matching the plugins' schemas, and
    SQLAlchemy 1.4's "not compatible with 2.0" banner (the optuna extra pins sqlalchemy<2)."""
    warnings.filterwarnings("ignore", message=SCHEMA_MATCH_WARNING)
    os.environ.setdefault("SQLALCHEMY_SILENCE_UBER_WARNING", "1")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_plugin(groups: list[tuple[str, str]]) -> Optional[str]:
    """The one-line error for the first ``(group, option)`` override whose plugin is missing."""
    for group, option in groups:
        group = group.lstrip("+~").lstrip("/")
        entry = PLUGINS.get((group, option)) or PLUGINS.get((group, "*"))
        if entry and option not in ("null", "None") and not _installed(entry[0]):
            module, extra = entry
            return f"{group}={option} needs the {extra!r} extra ({module} is not installed): pip install 'nodex[{extra}]'"
    return None


def sweep_results(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(job dir, result.json payload)`` for every job under ``sweep_dir``."""
    out = []
    for path in sorted(Path(sweep_dir).rglob("result.json")):
        try:
            out.append((path.parent, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            out.append((path.parent, {"status": "unreadable", "error": str(exc)}))
    return out


@dataclass
class SweepOutcome:
    """What one multirun left on disk: its dir and the job dirs whose ``result.json`` did not
    say ``completed`` (with the reason)."""

    sweep_dir: Path
    jobs: int
    failed: list[tuple[Path, str]]

    def line(self) -> str:
        return f"nodex: sweep finished: {self.jobs - len(self.failed)}/{self.jobs} jobs completed in {self.sweep_dir} (table: nodex report {self.sweep_dir})"


_outcomes: list[SweepOutcome] = []


def take_outcome() -> SweepOutcome | None:
    """The outcome of the multirun that ended last in this process (once), else ``None``."""
    return _outcomes.pop() if _outcomes else None


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, read the jobs' ``result.json`` files, print
    one summary line and leave the :class:`SweepOutcome` for the CLI's exit code."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        results = sweep_results(sweep_dir)
        if not results:
            return
        failed = [(d, str(r.get("error") or r.get("status"))) for d, r in results if r.get("status") != "completed"]
        outcome = SweepOutcome(sweep_dir, len(results), failed)
        print(outcome.line(), flush=True)
        _outcomes.clear()
        _outcomes.append(outcome)
