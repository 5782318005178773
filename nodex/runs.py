"""A run's record on disk: writing ``result.json`` (and an ensemble's ``ensemble.json``), finding and reading runs.

``result.json`` (one per run directory, one per ensemble member; written atomically by :func:`write_json`):

- ``status``: ``completed`` | ``failed`` | ``interrupted`` (a run that has not finished says ``failed``)
- ``error``: one line saying why (``null`` when completed)
- ``metrics``: ``{"test/accuracy": ..., "test/loss": ..., ...}`` (empty unless completed)
- ``nfe_forward`` / ``nfe_backward``: mean function evaluations per training step (forward solve / adjoint)
- ``params``, ``steps``, ``wall_time_s``, ``device``, ``threads``
- ``versions``: python, torch, torchdiffeq, nodex
- ``config``: the resolved config; ``seed``; ``command``: the job's own command line
- ``warnings``: only when there are any (figures that could not be written; the status unaffected)
- ``ensemble_member``: a member of a seed ensemble only: ``index``, ``size``, ``parent``

A run read back (:func:`load_run`) that has no ``result.json`` (killed, or still running) stands in as status
``missing``; one whose ``result.json`` cannot be read or has the wrong shape, as ``unreadable``. Its Hydra snapshot
(``RUN_DIR/.hydra``: the command-line overrides and the preset chosen per config group) comes with it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

log = logging.getLogger("nodex")

# The keys a result.json must have, with their types, to be read as one.
RESULT_SHAPE = {"status": str, "metrics": dict, "config": dict}


# ----------------------------------------------------------------------------------------------
# Writing


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (temp file + rename; a failed write leaves the old file and no temp file).

    Raises:
        OSError: the file could not be written (disk full, read-only directory).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def versions() -> dict[str, str]:
    """The versions a run's record names: python, torch, torchdiffeq, nodex (torch is imported here, on first
    use: reading runs never needs it)."""
    import platform

    import torch
    import torchdiffeq

    import nodex

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchdiffeq": torchdiffeq.__version__, "nodex": nodex.__version__}


def new_result(seed: int, resolved: dict[str, Any]) -> dict[str, Any]:
    """A ``result.json`` payload for a run that has not finished (``status: failed`` until it does)."""
    return {
        "status": "failed", "error": None, "metrics": {}, "nfe_forward": None, "nfe_backward": None,
        "params": None, "steps": 0, "wall_time_s": None, "device": None, "versions": versions(),
        "config": resolved, "seed": int(seed), "command": " ".join(sys.argv),
    }


def new_summary(resolved: dict[str, Any]) -> dict[str, Any]:
    """An ``ensemble.json`` payload for an ensemble that has not finished."""
    return {
        "status": "failed", "error": None, "kind": "ensemble", "size": None, "seeds": [], "members": [],
        "metrics": {}, "metrics_std": {}, "member_metrics": [], "steps": 0, "wall_time_s": None,
        "nfe_forward": None, "nfe_backward": None, "shared_step_sizes": None, "device": None,
        "versions": versions(), "config": resolved, "command": " ".join(sys.argv),
    }


def record_failure(run_dir: Path, config: dict[str, Any], error: Optional[str], *, status: str = "failed",
                   wall_time_s: Optional[float] = None, replace: bool = True) -> None:
    """The ``result.json`` of a run that ended before it could record itself (before any member existed, or
    before the trainer was built): ``status`` and ``error`` with ``config`` (seed from ``config["seed"]``).

    ``replace=False`` keeps a ``result.json`` already there (the run's own, fuller record). When even this write
    fails (disk full), the log says so and the error that ended the run stays what the caller reports.
    """
    path = Path(run_dir) / "result.json"
    if not replace and path.exists():
        return
    try:
        result = new_result(int(config.get("seed") or 0), config)
        result.update(status=status, error=error, wall_time_s=wall_time_s)
        write_json(path, result)
    except (OSError, ValueError) as exc:
        log.error("could not record the run's outcome (%s)", exc)


# ----------------------------------------------------------------------------------------------
# Reading


def mkdir_with_suffix(path: Path, tries: int = 1000) -> Path:
    """The first of ``path``, ``path-1``, ``path-2``... that ``os.mkdir`` creates (atomic: two processes that name a
    dir by the same second never share one).

    Raises:
        FileExistsError: all ``tries`` names exist.
    """
    for i in range(tries):
        candidate = path if i == 0 else path.with_name(f"{path.name}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{path} and {tries - 1} suffixed names exist")


def read_yaml(path: Path) -> Any:
    """The YAML file at ``path``, or ``None`` when it is missing or unreadable."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def override_key(line: str) -> str:
    """The dotted key of one Hydra command-line override: ``+trainer.lr=0.1`` -> ``trainer.lr``."""
    return str(line).split("=", 1)[0].lstrip("+~")


def hydra_snapshot(run_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """A run directory's Hydra snapshot (``RUN_DIR/.hydra``): its command-line overrides and the presets Hydra
    chose per config group (``[]`` / ``{}`` where a file is missing or unreadable)."""
    hydra_dir = Path(run_dir) / ".hydra"
    overrides = read_yaml(hydra_dir / "overrides.yaml") or []
    choices = (((read_yaml(hydra_dir / "hydra.yaml") or {}).get("hydra") or {}).get("runtime") or {}).get("choices")
    return [str(o) for o in overrides], dict(choices or {})


SNAPSHOT_NEW = ".hydra.new"  # where a job's Hydra snapshot waits while its dir already holds one


def snapshot_subdir(output_dir: str) -> str:
    """``hydra.output_subdir`` of a job (the ``nodex_snapshot_subdir`` resolver): ``.hydra``, or :data:`SNAPSHOT_NEW`
    where ``output_dir`` already holds a run's snapshot, which a job that is then refused must not overwrite."""
    return SNAPSHOT_NEW if (Path(output_dir) / ".hydra").is_dir() else ".hydra"


def take_snapshot(run_dir: Path) -> None:
    """The job may run: its waiting snapshot (:data:`SNAPSHOT_NEW`) becomes the run dir's ``.hydra``."""
    new = Path(run_dir) / SNAPSHOT_NEW
    if not new.is_dir():
        return
    old = Path(run_dir) / ".hydra"
    stale = Path(run_dir) / ".hydra.old"
    shutil.rmtree(stale, ignore_errors=True)
    if old.is_dir():
        old.rename(stale)
    new.rename(old)
    shutil.rmtree(stale, ignore_errors=True)


def drop_snapshot(run_dir: Path) -> None:
    """The job ended without taking its snapshot in (refused, or failed before it could run): remove it."""
    shutil.rmtree(Path(run_dir) / SNAPSHOT_NEW, ignore_errors=True)


EARLIER_LAUNCH_DIRS = "earlier_launch_dirs"  # in .hydra/: the folders earlier attempts of a resumed run started from


def launch_dir(run_dir: Path) -> Optional[Path]:
    """The folder the run was started from (Hydra's ``runtime.cwd``), where its own ``_target_`` modules may live;
    ``None`` where the snapshot is missing."""
    runtime = ((read_yaml(Path(run_dir) / ".hydra" / "hydra.yaml") or {}).get("hydra") or {}).get("runtime") or {}
    return Path(runtime["cwd"]) if runtime.get("cwd") else None


def launch_dirs(run_dir: Path) -> list[Path]:
    """Every folder the run was started from, the latest first: a run resumed from another folder keeps the
    earlier ones (its modules may live there)."""
    latest = launch_dir(run_dir)
    earlier = Path(run_dir) / ".hydra" / EARLIER_LAUNCH_DIRS
    listed = [Path(line) for line in earlier.read_text().splitlines() if line.strip()] if earlier.is_file() else []
    return list(dict.fromkeys([*([latest] if latest else []), *listed]))


def take_resumed_snapshot(run_dir: Path) -> None:
    """:func:`take_snapshot` for a run that continues in ``run_dir``: the folders its earlier attempts started from
    stay listed beside the new snapshot."""
    before = launch_dirs(run_dir)
    take_snapshot(run_dir)
    latest = launch_dir(run_dir)
    earlier = [d for d in before if d != latest]
    if earlier and (Path(run_dir) / ".hydra").is_dir():
        (Path(run_dir) / ".hydra" / EARLIER_LAUNCH_DIRS).write_text("".join(f"{d}\n" for d in earlier))


@dataclass
class Run:
    """One run directory: its ``result.json`` (or a stand-in when the run died without one)."""

    path: Path
    result: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.result.get("status") or "unknown")

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @property
    def error(self) -> Optional[str]:
        return self.result.get("error")

    @property
    def config(self) -> dict[str, Any]:
        return self.result.get("config") or {}

    @property
    def experiment(self) -> Optional[str]:
        return self.config.get("experiment_name") or self.choices.get("experiment")


def read_result(path: Path) -> dict[str, Any]:
    """The payload of the ``result.json`` at ``path``.

    Raises:
        OSError, UnicodeDecodeError: the file cannot be read.
        ValueError: not JSON, or not a nodex ``result.json`` (names the keys of :data:`RESULT_SHAPE` it lacks).
    """
    result = json.loads(Path(path).read_text())  # JSONDecodeError is a ValueError
    wrong = ["not a JSON object"] if not isinstance(result, dict) else [
        f"'{k}' missing or not a {t.__name__}" for k, t in RESULT_SHAPE.items() if not isinstance(result.get(k), t)]
    if wrong:
        raise ValueError(f"not a nodex result.json ({', '.join(wrong)})")
    return result


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The JSON object at ``path`` (a run's record, a sweep's ledger entry, a lock's owner), ``None`` when it is
    absent or unreadable."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def record_path(run_dir: Path) -> Optional[Path]:
    """Where a run dir's own record is: an ensemble's ``ensemble.json``, else ``result.json``; ``None`` when neither."""
    return next((p for p in (Path(run_dir) / "ensemble.json", Path(run_dir) / "result.json") if p.exists()), None)


def run_record(run_dir: Path) -> dict[str, Any]:
    """A run dir's own record (see :func:`record_path`), ``{}`` when absent or unreadable."""
    path = record_path(run_dir)
    return (read_json(path) or {}) if path is not None else {}


def load_run(run_dir: Path) -> Run:
    """Read ``run_dir/result.json`` and the ``.hydra`` snapshot next to it. A run that has a ``.hydra`` config but
    no ``result.json`` (killed, or still running) gets status ``missing``; an unreadable one, ``unreadable`` (with
    one warning line on stderr naming the file)."""
    run_dir = Path(run_dir)
    overrides, choices = hydra_snapshot(run_dir)
    result_path = run_dir / "result.json"
    if result_path.exists():
        try:
            result = read_result(result_path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            print(f"nodex: warning: {result_path}: {str(exc).splitlines()[0]}; reported as unreadable", file=sys.stderr)
            result = {"status": "unreadable", "error": f"result.json unreadable: {exc}",
                      "config": read_yaml(run_dir / ".hydra" / "config.yaml") or {}}
    else:
        result = {"status": "missing", "error": "no result.json (the job was killed, or is still running)",
                  "config": read_yaml(run_dir / ".hydra" / "config.yaml") or {}}
    return Run(run_dir, result, overrides, choices)


def _job_name(hydra_yaml: Path) -> Optional[str]:
    cfg = read_yaml(hydra_yaml) or {}
    return ((cfg.get("hydra") or {}).get("job") or {}).get("name")


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Every run under ``paths`` (run dirs, multirun dirs, or any folder above them), in path order.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    dirs: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory")
        if p.is_file():
            p = p.parent
        for hit in p.rglob("result.json"):
            dirs.add(hit.parent)
        for hit in p.rglob(".hydra/hydra.yaml"):  # a train job that died before writing result.json
            run_dir = hit.parent.parent
            if (run_dir / "ensemble.json").exists():  # an ensemble's parent: its members are the runs
                continue
            if run_dir not in dirs and _job_name(hit) == "train":
                dirs.add(run_dir)
    unique = {d.resolve(): d for d in sorted(dirs, reverse=True)}  # one run reached through a symlink counts once
    return [load_run(d) for d in sorted(unique.values())]
