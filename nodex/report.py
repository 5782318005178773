"""``nodex report``: a results table from the ``result.json`` files of run and multirun dirs.

Runs are grouped by chosen config keys (``--by model,data``; ``auto`` = the experiment, model,
data and every override that differs between runs and can change results: never seeds, output paths, logging,
progress, checkpointing, threads or resuming, see :data:`NON_RESULT_KEYS`), metrics are averaged over the runs
of a group (seeds) as mean ± sample std, and failed or interrupted runs are counted and listed, never averaged.
Where a ``paper`` lookup is given (``nodex report`` passes :func:`nodex.paper.claims.paper_value`) and it
knows a number for the group's experiment, that number is printed beside ours.

Group keys: ``experiment`` (the run's ``experiment_name``, else the experiment Hydra chose);
a config group such as ``model``/``data``/``solver`` (the preset Hydra chose, e.g. ``model=data_control`` in
``experiment=annuli_data_control``; for runs without Hydra's record its ``name``, ``method`` or ``kind``);
any dotted config key (``trainer.optim.lr``). Metric names: a key of ``result["metrics"]``
(``test/accuracy``), a top-level numeric key of ``result.json`` (``nfe_forward`` and
``nfe_backward`` = mean per training step, ``params``, ``wall_time_s``, ``steps``), or a short
name for a test metric (``accuracy`` = ``test/accuracy``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Protocol

from nodex.runs import Run, find_runs, load_run, override_key

__all__ = ["Group", "PaperLookup", "Run", "auto_keys", "auto_metrics", "find_runs", "fmt", "key_value", "load_run",
           "metric_value", "render", "report_main", "stat_cell", "summarize"]

TOP_LEVEL_METRICS = ("nfe_forward", "nfe_backward", "params", "wall_time_s", "steps")
# Keys (and prefixes ending in "." or "/") that never change a run's results: seeds (averaged over), output paths,
# logging cadence, progress display, checkpointing, threads and resuming. Never an automatic group key.
NON_RESULT_KEYS = ("seed", "hydra.", "hydra/", "logger.", "monitor", "experiment_name", "trainer.progress",
                   "trainer.resume", "trainer.checkpoint_every", "trainer.num_threads", "trainer.log_every",
                   "trainer.val_every", "trainer.plots", "trainer.plot_every")
# What a metric column means where its name alone does not say (printed under the Markdown table).
COLUMN_NOTES = {
    "nfe_forward": "mean function evaluations of the forward solve per training step",
    "nfe_backward": "mean function evaluations of the backward (adjoint) solve per training step",
    "test/nfe_forward": "mean function evaluations per test batch (one forward solve, no gradients)",
    "test/loss_terminal": "the terminal part of test/loss (test/loss adds the integral loss)",
}
DEFAULT_TAIL = ("nfe_forward", "nfe_backward", "params", "wall_time_s")
FORMATS = ("markdown", "csv", "json")


class PaperNumber(Protocol):
    """A number the paper reports (:class:`nodex.paper.claims.PaperValue`): its value, as printed, and where from."""

    value: float
    source: str

    def text(self) -> str: ...


# (experiment or None, metric) -> the paper's number, or None where the paper has none.
PaperLookup = Callable[[Optional[str], str], Optional[PaperNumber]]


# ----------------------------------------------------------------------------------------------
# Keys and metrics


_ABSENT = object()


def _select(tree: Any, dotted: str, default: Any = None) -> Any:
    node = tree
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return default
    return node


def has_key(run: Run, key: str) -> bool:
    """Whether ``key`` names something of ``run``: ``experiment``, a config group Hydra chose, or a config key."""
    return key == "experiment" or key in run.choices or _select(run.config, key, _ABSENT) is not _ABSENT


def key_value(run: Run, key: str) -> Any:
    """The value of group key ``key`` for ``run`` (see the module docstring)."""
    if key == "experiment":
        return run.experiment
    value = _select(run.config, key)
    if isinstance(value, dict) and run.choices.get(key):
        return run.choices[key]  # a config group: the preset Hydra chose (an experiment renames model.name)
    if isinstance(value, dict):
        for name in ("name", "method", "kind"):
            if name in value:
                return value[name]
        return run.choices.get(key, json.dumps(value, sort_keys=True))
    if value is None and key in run.choices:
        return run.choices[key]
    if isinstance(value, list):
        return json.dumps(value)
    return value


def metric_value(run: Run, name: str) -> Optional[float]:
    """``name`` from ``result["metrics"]`` (also as ``test/NAME``) or the result's top level."""
    metrics = run.result.get("metrics") or {}
    if name in metrics:
        value = metrics[name]
    elif name in TOP_LEVEL_METRICS or (name in run.result and name not in ("seed", "config")):
        value = run.result.get(name)
    else:
        value = metrics.get(f"test/{name}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def changes_results(key: str) -> bool:
    """False for a key in :data:`NON_RESULT_KEYS`, under one of its prefixes, or the group a prefix names."""
    for k in NON_RESULT_KEYS:
        if key == k or (k[-1] in "./" and (key.startswith(k) or key == k[:-1])):
            return False
    return True


def auto_keys(runs: list[Run]) -> list[str]:
    """``experiment`` (when any run has one), ``model``, ``data``, then every override key that can change
    results (:func:`changes_results`) whose value differs between runs."""
    keys = ["experiment"] if any(r.experiment for r in runs) else []
    keys += ["model", "data"]
    seen: dict[str, set[str]] = {}
    for run in runs:
        for line in run.overrides:
            key = override_key(line)
            if not changes_results(key) or key in ("experiment", "model", "data"):
                continue
            seen.setdefault(key, set()).add(line.split("=", 1)[1] if "=" in line else "")
    for key in seen:
        values = {str(key_value(r, key)) for r in runs}
        if len(values) > 1:
            keys.append(key)
    return keys


def auto_metrics(runs: list[Run]) -> list[str]:
    """Every ``test/*`` metric of the completed runs, then NFE, params and wall time. ``test/loss_terminal`` is
    left out where it equals ``test/loss`` in every run (no integral loss: the same number twice)."""
    names: list[str] = []
    for run in runs:
        if run.ok:
            for name in run.result.get("metrics") or {}:
                if name.startswith("test/") and name not in names:
                    names.append(name)
    done = [r for r in runs if r.ok]
    if all(_same(metric_value(r, "test/loss_terminal"), metric_value(r, "test/loss")) for r in done):
        names = [n for n in names if n != "test/loss_terminal"]
    tail = [m for m in DEFAULT_TAIL if any(metric_value(r, m) for r in done)]
    return names + tail


def _same(a: Optional[float], b: Optional[float]) -> bool:
    return a is None or (b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12))


# ----------------------------------------------------------------------------------------------
# Summary


@dataclass
class Group:
    """The runs that share one value of every group key."""

    key: tuple[Any, ...]
    runs: list[Run]

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]

    def by_seed(self) -> list[tuple[int, Run]]:
        """``(seed, run)`` of the completed runs that record an integer seed, in seed order."""
        seeded = [(r.result["seed"], r) for r in self.completed if isinstance(r.result.get("seed"), int)]
        return sorted(seeded, key=lambda pair: pair[0])

    @property
    def experiment(self) -> Optional[str]:
        names = {r.experiment for r in self.runs if r.experiment}
        return names.pop() if len(names) == 1 else None

    def stat(self, metric: str) -> Optional[tuple[float, float, int]]:
        """``(mean, sample std (0 for one run), n)`` over the completed runs that have ``metric``."""
        values = [v for v in (metric_value(r, metric) for r in self.completed) if v is not None]
        if not values:
            return None
        if not all(math.isfinite(v) for v in values):  # a NaN or inf metric: the statistics say so, not fail
            return math.nan, math.nan, len(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.fmean(values), std, len(values)

    def paper(self, metric: str, lookup: Optional[PaperLookup]) -> Optional[PaperNumber]:
        """The paper's number for ``metric`` (or ``test/METRIC``) of this group's experiment; ``None`` without a
        ``lookup``."""
        if lookup is None:
            return None
        return lookup(self.experiment, metric) or lookup(self.experiment, f"test/{metric}")


def summarize(runs: list[Run], by: list[str]) -> list[Group]:
    """Runs grouped by the values of ``by`` (in first-seen order of sorted run paths)."""
    groups: dict[tuple[Any, ...], Group] = {}
    for run in runs:
        key = tuple(key_value(run, k) for k in by)
        groups.setdefault(key, Group(key, []))
        groups[key].runs.append(run)
    return sorted(groups.values(), key=lambda g: tuple(str(v) for v in g.key))


def fmt(value: Optional[float]) -> str:
    """A compact number: integers as integers, otherwise 4 significant digits."""
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.4g}"


def stat_cell(stat: Optional[tuple[float, float, int]]) -> str:
    """``mean ± std`` of a group statistic ``(mean, std, n)`` (std shown for n > 1), ``–`` for none."""
    if stat is None:
        return "–"
    mean, std, n = stat
    return fmt(mean) + (f" ± {std:.2g}" if n > 1 and std > 0 else "")


def _paper_metrics(groups: list[Group], metrics: list[str], paper: Optional[PaperLookup]) -> list[str]:
    return [m for m in metrics if any(g.paper(m, paper) is not None for g in groups)]


def to_records(groups: list[Group], by: list[str], metrics: list[str],
               paper: Optional[PaperLookup] = None) -> list[dict[str, Any]]:
    """One JSON-able dict per group: keys, counts, ``{metric: {mean, std, n, paper, paper_source}}``,
    and the failed runs (path, status, error)."""
    records = []
    for g in groups:
        rec: dict[str, Any] = dict(zip(by, g.key))
        rec["n"] = len(g.completed)
        rec["failed"] = len(g.failed)
        rec["metrics"] = {}
        for m in metrics:
            stat = g.stat(m)
            entry: dict[str, Any] = {"mean": stat[0], "std": stat[1], "n": stat[2]} if stat else {"mean": None,
                                                                                                  "std": None, "n": 0}
            pv = g.paper(m, paper)
            if pv is not None:
                entry.update(paper=pv.value, paper_shown=pv.text(), paper_source=pv.source)
            rec["metrics"][m] = entry
        rec["failed_runs"] = [{"path": str(r.path), "status": r.status,
                               "error": r.result.get("error")} for r in g.failed]
        records.append(rec)
    return records


def render_markdown(groups: list[Group], by: list[str], metrics: list[str], paper: Optional[PaperLookup] = None) -> str:
    """A Markdown table (mean ± std over seeds; ``paper`` columns where known) plus the list of
    failed runs and the paper values' sources."""
    paper_cols = _paper_metrics(groups, metrics, paper)
    header = [*by, "n", "failed"]
    for m in metrics:
        header.append(m)
        if m in paper_cols:
            header.append(f"{m} (paper)")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    sources: dict[str, str] = {}
    for g in groups:
        row = [("–" if v is None else str(v)) for v in g.key] + [str(len(g.completed)), str(len(g.failed))]
        for m in metrics:
            row.append(stat_cell(g.stat(m)))
            if m in paper_cols:
                pv = g.paper(m, paper)
                row.append(pv.text() if pv else "")
                if pv:
                    sources[pv.source] = ""
        lines.append("| " + " | ".join(row) + " |")
    out = "\n".join(lines)
    n_runs = sum(len(g.runs) for g in groups)
    out += (f"\n\n{n_runs} runs; mean ± sample std over the completed runs of each row (n); "
            "failed runs are not averaged.")
    notes = column_notes(metrics)
    if notes:
        out += "\n" + "; ".join(f"{m}: {text}" for m, text in notes.items()) + "."
    if sources:
        out += "\nPaper values: " + "; ".join(sources) + "."
    failed = [r for g in groups for r in g.failed]
    if failed:
        out += f"\n\nFailed or interrupted runs ({len(failed)}):\n"
        out += "\n".join(f"- `{r.path}`: {r.status}: {r.result.get('error') or 'no error recorded'}" for r in failed)
    return out + "\n"


def column_notes(metrics: list[str]) -> dict[str, str]:
    """The :data:`COLUMN_NOTES` of the shown metrics, in their order."""
    return {m: COLUMN_NOTES[m] for m in metrics if m in COLUMN_NOTES}


def render_csv(groups: list[Group], by: list[str], metrics: list[str], paper: Optional[PaperLookup] = None) -> str:
    """CSV, one row per group: keys, n, failed, then ``METRIC_mean``, ``METRIC_std`` (and
    ``METRIC_paper`` where the paper has values)."""
    paper_cols = _paper_metrics(groups, metrics, paper)
    header = [*by, "n", "failed"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std"] + ([f"{m}_paper"] if m in paper_cols else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for g in groups:
        row: list[Any] = [*("" if v is None else v for v in g.key), len(g.completed), len(g.failed)]
        for m in metrics:
            stat = g.stat(m)
            row += [stat[0], stat[1]] if stat else ["", ""]
            if m in paper_cols:
                pv = g.paper(m, paper)
                row.append(pv.value if pv else "")
        writer.writerow(row)
    return buf.getvalue()


def render(runs: list[Run], by: list[str] | None = None, metrics: list[str] | None = None, fmt_name: str = "markdown",
           paper: Optional[PaperLookup] = None) -> str:
    """The report of ``runs`` in ``fmt_name`` (markdown | csv | json), with the numbers ``paper`` knows beside
    ours (none without it)."""
    by = by or auto_keys(runs)
    metrics = metrics or auto_metrics(runs)
    groups = summarize(runs, by)
    if fmt_name == "markdown":
        return render_markdown(groups, by, metrics, paper)
    if fmt_name == "csv":
        return render_csv(groups, by, metrics, paper)
    if fmt_name == "json":
        payload = {"by": by, "metrics": metrics, "notes": column_notes(metrics),
                   "groups": to_records(groups, by, metrics, paper)}
        return json.dumps(payload, indent=2, default=str) + "\n"
    raise ValueError(f"--format={fmt_name!r}; choose one of: {', '.join(FORMATS)}")


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line (``nodex: error: ...; see PROG --help``) and exit 2, not a
    usage block."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        print(f"nodex: error: {message}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(2)


def _a_record(path: Path, runs: list[Run]) -> bool:
    """Whether writing ``path`` would replace a run's record (one of the runs read, or any file named as one)."""
    if path.name in ("result.json", "ensemble.json", "eval.json"):
        return True
    target = path.resolve()
    return any(target == (r.path / "result.json").resolve() for r in runs)


def report_main(argv: list[str], paper: Optional[PaperLookup] = None) -> int:
    """``nodex report PATH [PATH ...] [--by KEYS] [--metrics NAMES] [--format F] [-o FILE]``; ``paper``: the
    paper's numbers, printed beside ours unless ``--no-paper``."""
    parser = OneLineParser(
        prog="nodex report",
        description="Tabulate the result.json files under run/multirun directories: mean ± std over seeds, "
                    "grouped by config keys.",
    )
    parser.add_argument("paths", nargs="+", help="run or multirun directories (searched recursively)")
    parser.add_argument("--by", default="auto",
                        help="comma-separated group keys: experiment, model, data, solver or any dotted config key "
                             "(default: auto = experiment, model, data + swept overrides)")
    parser.add_argument("--metrics", default="auto",
                        help="comma-separated metrics, e.g. test/accuracy,nfe_forward,params,wall_time_s "
                             "(default: every test/* metric + NFE, params, wall time)")
    parser.add_argument("--format", default=None, choices=FORMATS,
                        help="output format (default: by -o's suffix, .csv or .json; else markdown)")
    parser.add_argument("--no-paper", action="store_true", help="leave out the paper's values")
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.paths)
    except FileNotFoundError as exc:
        print(f"nodex: error: {exc}", file=sys.stderr)
        return 2
    if not runs:
        print(f"nodex: error: no result.json under {', '.join(args.paths)}; "
              "point at a run or multirun directory (outputs/train/...)", file=sys.stderr)
        return 2
    by = None if args.by == "auto" else _split(args.by)
    unknown_by = [k for k in by or [] if not any(has_key(r, k) for r in runs)]
    if unknown_by:
        print(f"nodex: error: no run has --by key {unknown_by[0]!r}; give experiment, model, data, solver or a "
              "dotted config key of the runs (e.g. trainer.optim.lr; `nodex train --cfg job` lists them)",
              file=sys.stderr)
        return 2
    metrics = None if args.metrics == "auto" else _split(args.metrics)
    if metrics is not None:
        unknown = [m for m in metrics if not any(metric_value(r, m) is not None for r in runs)]
        if unknown and len(unknown) == len(metrics):
            known = sorted({k for r in runs for k in (r.result.get("metrics") or {})} | set(TOP_LEVEL_METRICS))
            print(f"nodex: error: no run has --metrics {','.join(unknown)}; choose from: {', '.join(known)}",
                  file=sys.stderr)
            return 2
    suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
    fmt = args.format or (suffix if suffix in ("csv", "json") else "markdown")  # -o t.csv: a CSV, not Markdown in it
    text = render(runs, by, metrics, fmt, paper=None if args.no_paper else paper)
    return _emit(text, args.output, runs)


def _emit(text: str, output: Optional[str], runs: list[Run]) -> int:
    """The report on stdout, or into ``output`` (``-o``); the exit code (2: ``-o`` is a run's record, 1: it cannot
    be written)."""
    if not output:
        sys.stdout.write(text)
        return 0
    if _a_record(Path(output), runs):
        print(f"nodex: error: -o {output} is a run's record (result.json, ensemble.json or eval.json); write the "
              "report to another file", file=sys.stderr)
        return 2
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)  # -o into a folder that does not exist yet
        Path(output).write_text(text)
    except OSError as exc:
        print(f"nodex: error: cannot write -o {output} ({exc.strerror or exc}); choose another path", file=sys.stderr)
        return 1
    print(f"wrote {output} ({len(runs)} runs)")
    return 0
