"""Running a reproduction's jobs, each in its own subprocess (``--jobs N`` at once; a crash never stops
the others; ``--resume`` reruns the seeds that did not complete), and the ``OUT/wall.json`` ledger."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from nodex.paper.planning import Budget
from nodex.paper.planning import Job, commands, run_order
from nodex.runs import read_json


def _results(label_dir: Path) -> list[dict[str, Any]]:
    """Every ``result.json`` under a label's directory (an ensemble's are its members')."""
    return [r for path in sorted(label_dir.rglob("result.json")) if (r := read_json(path)) is not None]


def completed_seeds(label_dir: Path) -> set[int]:
    """The seeds with a completed run under ``label_dir``."""
    return {int(r.get("seed", -1)) for r in _results(label_dir) if r.get("status") == "completed"}


def _set_aside(label_dir: Path, dest: Path) -> None:
    """Move a label's run folders with no completed run to ``dest/LABEL/`` before ``--resume`` reruns them."""
    if not label_dir.is_dir():
        return
    for sub in sorted(p for p in label_dir.iterdir() if p.is_dir()):
        results = _results(sub)
        if any(r.get("status") == "completed" for r in results) or not (results or (sub / ".hydra").is_dir()):
            continue
        target = dest / label_dir.name / f"{sub.name}-{_dt.datetime.now():%H%M%S}"
        target.parent.mkdir(parents=True, exist_ok=True)
        sub.rename(target)


def run_one(job: Job, out_dir: Path, seeds: tuple[int, ...], threads: Optional[int],
            launcher: Optional[str], resume: bool, timeout: Optional[float], env: dict[str, str]) -> tuple[str, bool]:
    """Run one job's commands (the seeds not done, under ``--resume``); returns the progress line's tail and whether
    every seed completed."""
    label_dir = out_dir / job.label
    done = completed_seeds(label_dir) if resume else set()
    missing = tuple(s for s in seeds if s not in done)
    if not missing:
        return "already done (--resume)", True
    if resume:
        _set_aside(label_dir, out_dir / ".failed")
    label_dir.mkdir(parents=True, exist_ok=True)
    started, code = time.perf_counter(), 0
    with open(label_dir / "reproduce.log", "a" if resume else "w") as log:
        for _, cmd in commands(job, out_dir, missing, threads, launcher):
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            try:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
    results = [r for r in _results(label_dir) if int(r.get("seed", -1)) in seeds]
    ok = len({int(r["seed"]) for r in results if r.get("status") == "completed"})
    errors = [r["error"] for r in results if r.get("status") != "completed" and r.get("error")] or [
        f"see {label_dir / 'reproduce.log'}"]
    note = f"  exit {code}: {errors[0]}" if ok < len(seeds) else ""
    kind = f"ensemble of {len(seeds)}" if job.ensemble and len(seeds) > 1 else "separate seeds"
    return f"{ok}/{len(seeds)} completed  {time.perf_counter() - started:7.1f} s  ({kind}){note}", ok == len(seeds)


def run_jobs(jobs: list[Job], budget: Budget, out_dir: Path, seeds: tuple[int, ...], n_parallel: int,
             launcher: Optional[str], resume: bool, timeout: Optional[float], threads: Optional[int] = None) -> int:
    """Run every non-skipped job, ``n_parallel`` at a time, printing one line per finished job;
    each gets ``threads`` torch threads (default: cores / ``n_parallel`` where the budget sets them). Returns how
    many jobs ended short of their seeds (a failed or timed-out command, with or without a result.json)."""
    todo = run_order([j for j in jobs if j.skip is None])
    cores = os.cpu_count() or 1
    if threads is None and budget.set_threads:
        threads = max(1, cores // max(1, n_parallel))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads or 1))}
    width = max((len(j.label) for j in todo), default=10)
    counter = {"done": 0}

    def one(job: Job) -> bool:
        line, complete = run_one(job, out_dir, seeds, threads, launcher, resume, timeout, env)
        counter["done"] += 1
        print(f"[{counter['done']:>3}/{len(todo)}] {job.label:<{width}}  {line}", flush=True)
        return complete

    with ThreadPoolExecutor(max_workers=max(1, n_parallel)) as pool:
        return sum(not complete for complete in pool.map(one, todo))


def add_wall(out_dir: Path, span: Optional[tuple[float, float]], command: str = "") -> Optional[float]:
    """The wall time so far: ``span`` (epoch seconds) and ``command`` added to ``OUT/wall.json``, and the length
    of the union of its spans (resumed or side-by-side runs, overlaps once); ``None`` when nothing ran there."""
    path, saved = out_dir / "wall.json", read_json(out_dir / "wall.json")
    try:
        spans, cmds = [tuple(map(float, s)) for s in saved["spans"]], [str(c) for c in saved.get("commands", [])]
    except (ValueError, KeyError, TypeError):
        spans, cmds = [], []
    if span is not None:
        spans.append(span)
        cmds.append(command)
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"spans": spans, "commands": cmds}, indent=1))
    if not spans:
        return None
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def recorded_commands(out_dir: Path) -> list[str]:
    """The invocations recorded in ``OUT/wall.json`` (each run, resumed or side by side)."""
    saved = read_json(out_dir / "wall.json")
    return [c for c in saved.get("commands", []) if c] if isinstance(saved, dict) else []
