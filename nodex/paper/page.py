"""The reproduction page (``REPRODUCTION.md``): each claim's checks judged over the seeds of its runs
(:func:`nodex.paper.checks.judge_seeds`), its figures, the runs, ensembles vs separate runs, the config
audit. A claim none of whose runs are here can be carried from an earlier page, saying so."""

from __future__ import annotations

import datetime as _dt
import fnmatch
import os
import platform
import re
import statistics
from dataclasses import dataclass
from typing import Optional

from nodex.paper.checks import Check, Rate, SeedOutcome, Values, judge_seeds, rate_of
from nodex.paper.claims import CLAIMS, Claim
from nodex.paper.paper_values import paper_value
from nodex.paper.experiments import Experiment, audit, discover
from nodex.paper.figures import FigureSink
from nodex.paper.planning import SEPARATE, Budget, Job
from nodex.paper.probes import PROBES, probe
from nodex.report import Group, Run, find_runs, fmt, metric_value, stat_cell

MAIN_METRICS = ("test/accuracy", "test/mse", "test/nll", "test/extrapolation_mse", "test/tracking_mse")
ENSEMBLE_NOTE = (
    "The seeds of a Neural ODE experiment train as one `trainer.ensemble=K` job: with a fixed-step solver each member "
    "is its separate run bit for bit; with nodex's adaptive solvers (dopri5 here) each member takes its own steps, so "
    "its metrics equal its separate run's to the solver tolerance and its NFE is its own. Run as separate seeds too:")


def collect(jobs: list[Job], out_dir) -> dict[str, Group]:
    """``{label: Group of its runs}`` for every job with run directories (probes added)."""
    groups = {}
    for job in jobs:
        runs: list[Run] = find_runs([out_dir / job.label]) if (out_dir / job.label).exists() else []
        add_probes(job.experiment, runs)
        if runs:
            groups[job.label] = Group((job.label,), runs)
    return groups


def add_probes(experiment: str, runs: list[Run]) -> None:
    """Each completed run of ``experiment`` gets its probes (:data:`PROBES`) as ``probe/NAME`` metrics, in memory."""
    for pattern, named in PROBES.items():
        if not fnmatch.fnmatchcase(experiment, pattern):
            continue
        for run in runs:
            for name, fn in named:
                if run.ok and (value := probe(run.path, name, fn)) is not None:
                    run.result.setdefault("metrics", {})[f"probe/{name}"] = value


def main_metric(group: Group) -> Optional[str]:
    """The first of :data:`MAIN_METRICS` the group's runs report (else its first test metric)."""
    names = [n for r in group.completed for n in (r.result.get("metrics") or {})]
    for name in MAIN_METRICS:
        if name in names:
            return name
    rest = [n for n in names if n.startswith("test/") and "loss" not in n and "nfe" not in n]
    return rest[0] if rest else None


def job_status(jobs: list[Job], groups: dict[str, Group]) -> dict[str, str]:
    """``label -> ok | failed | not run[: why]`` for every planned job."""
    return {job.label: (f"not run: {job.skip}" if job.skip else "not run" if (g := groups.get(job.label)) is None
                        else "failed" if not g.completed else "ok") for job in jobs}


def seed_values(groups: dict[str, Group], status: dict[str, str]) -> Values:
    """``(label, metric) -> {seed: value}`` over a label's completed runs (``None``: none)."""

    def values(label: str, metric: str) -> Optional[dict[int, float]]:
        g = groups.get(label)
        if g is None or status.get(label) != "ok":
            return None
        return {seed: v for seed, run in g.by_seed() if (v := metric_value(run, metric)) is not None} or None

    return values


def _text_cell(check: Check) -> bool:
    """Whether a seed's cell shows what the check reads (two values) rather than the one metric."""
    return check.op in ("lt_run", "gt_run", "band") or bool(check.requires)


def _per_seed_cell(check: Check, outcomes: list[SeedOutcome]) -> str:
    """``0: 1, 6: 0.489 ✗`` (what the check reads per seed; ✗ where the seed fails)."""
    def one(o: SeedOutcome) -> str:
        if check.op == "order":
            return f"{o.seed}: {'✓' if o.passed else '✗'}"
        return f"{o.seed}: {o.text if _text_cell(check) else fmt(o.value)}" + ("" if o.passed else " ✗")

    return ", ".join(one(o) for o in outcomes)


def _summary_cell(check: Check, outcomes: list[SeedOutcome], values: Values) -> str:
    """Median, worst seed, mean ± std (an ``order`` check: the ranking of the means, worst seed)."""
    worst = min(outcomes, key=lambda o: o.margin)
    if check.op == "order":
        means = {pair: statistics.fmean(got.values()) for pair in check.reads() if (got := values(*pair))}
        return f"means: {check.reading(lambda label, metric: means[(label, metric)])}; worst seed {worst.seed}"
    v = [o.value for o in outcomes]
    std = f" ± {statistics.stdev(v):.2g}" if len(v) > 1 else ""
    worst_text = (f"closest seed {worst.seed} ({worst.text})" if _text_cell(check)
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


def check_row(claim: Claim, check: Check, values: Values, status: dict[str, str]) -> CheckResult:
    """``check`` of ``claim`` judged over the seeds of its runs, with its table row."""
    outcomes = judge_seeds(check, values)
    need = claim.rate_needed(check)
    if not outcomes:
        verdict = _not_run_verdict(check, status)
        return CheckResult(check, verdict, f"| {check.label} | {check.paper} | {check.tolerance()} | – | "
                                           f"not run | | {Rate(0, 0, need).share} | {verdict} |")
    rate = rate_of(outcomes, need)
    verdict = "PASS" if rate.holds else "FAIL"
    failing = [o for o in outcomes if not o.passed]
    # the worst seed's figure is worth showing when the check fails on some seeds only
    worst = min(failing, key=lambda o: o.margin).seed if 0 < len(failing) < len(outcomes) else None
    row = (f"| {check.label} | {check.paper} | {check.tolerance()} | **{rate.k}/{rate.n}** | "
           f"{_per_seed_cell(check, outcomes)} | {_summary_cell(check, outcomes, values)} | {rate.criterion()} | "
           f"{verdict} |")
    return CheckResult(check, verdict, row, rate, worst)


def _not_run_verdict(check: Check, status: dict[str, str]) -> str:
    """Why ``check`` has no seed to judge: its runs failed, were not selected, or lack the metric."""
    failed = [label for label in check.labels() if status.get(label) == "failed"]
    if failed:
        return f"FAIL (every run failed: {', '.join(failed)})"
    for label, state in ((label, status.get(label)) for label in check.labels()):
        if state is None:
            exists = label.split("@", 1)[0] in {e.name for e in discover()}
            return "not run: not selected (--only)" if exists else f"not run: no experiment {label} yet"
        if state != "ok":
            return state
    return "not run: metric not recorded"


CHECK_HEADER = ("| check | paper | pass if (per seed) | seeds that hold | per seed | summary | criterion | result |\n"
                "|---|---|---|---|---|---|---|---|")


def claim_verdict(results: list[CheckResult]) -> str:
    """``FAIL`` if a check fails, ``PASS`` if every check passes, else ``not run``."""
    failed, passed = (any(r.verdict.startswith("FAIL") for r in results), all(r.verdict == "PASS" for r in results))
    return "FAIL" if failed else "PASS" if results and passed else "not run"


def earlier_sections(text: str) -> dict[str, dict[str, object]]:
    """An earlier page's claims: ``{id: {"verdict", "rates", "lines"}}`` (``lines``: its check table
    and figure lines), for the claims it judged (not "not run"); plus ``"made"``: its budget and date."""
    rows = re.findall(r"^\| \[([^\]]+)\]\([^)]*\) \| ([^|]+?) \| (.*) \|$", text, re.M)
    summary = {cid: (verdict, rates) for cid, verdict, rates in rows}
    out: dict[str, dict[str, object]] = {}
    for cid, body in re.findall(r'<a id="claim-([^"]+)"></a>\n(.*?)(?=\n<a id="claim-|\n## |\Z)', text, re.S):
        verdict, rates = summary.get(cid.replace("-", "."), ("not run", ""))
        if verdict == "not run":
            continue
        lines = [ln for ln in body.splitlines() if ln.startswith(("|", "<p><img", "<img", "Figures:"))]
        out[cid.replace("-", ".")] = {"verdict": verdict, "rates": rates, "lines": lines}
    budget, day = re.search(r"^Budget \*\*(\w+)\*\*", text, re.M), re.search(r"^Made with .* on (\d{4}-\d\d-\d\d)",
                                                                                   text, re.M)
    out["made"] = f"budget {budget.group(1) if budget else '?'}, made on {day.group(1) if day else 'an earlier date'}"
    return out


def _carried(claim: Claim, earlier: dict) -> list[str]:
    """A claim not run here, as the earlier page judged it, under a statement saying so."""
    lines = earlier[claim.id]["lines"]
    same = all(f"| {c.label} | {c.paper} | {c.tolerance()} |" in "\n".join(lines) for c in claim.checks)
    head = (f"**Not rerun here.** The table and figures below are the earlier page's ({earlier['made']}), with its "
            "per-seed values; its runs are not in this run folder.")
    if same:
        return ["", head + " Its checks are the current ones.", "", *lines]
    current = "; ".join(f"{c.label}: {c.tolerance()}" for c in claim.checks)
    return ["", head + f" **Judged by the earlier checks**, not the current ones ({current}), which need those "
            "runs' checkpoints.", "", *lines]


def claim_rows(groups: dict[str, Group], status: dict[str, str], figures: Optional[FigureSink] = None,
               earlier: Optional[dict] = None) -> tuple[list[str], dict[str, int], list[str]]:
    """One section per claim (its table over seeds, then its figures), the tally of checks, and
    the summary table's rows."""
    values = seed_values(groups, status)
    rows, summary, tally = [], [], {"PASS": 0, "FAIL": 0, "not run": 0, "carried": 0}
    for claim in CLAIMS:
        results = [check_row(claim, check, values, status) for check in claim.checks]
        verdict = claim_verdict(results)
        anchor = f'\n<a id="claim-{claim.id.replace(".", "-")}"></a>\n\n### {claim.id}. {claim.text}\n'
        rows += [anchor, f"Source: {claim.source}. Criterion: {claim.why_rate}.\n"]
        if verdict == "not run" and earlier and claim.id in earlier:
            tally["carried"] += len(results)
            summary.append(f"| [{claim.id}](#claim-{claim.id.replace('.', '-')}) | not rerun (earlier checks: "
                           f"{earlier[claim.id]['verdict']}) | {earlier[claim.id]['rates']} |")
            rows += _carried(claim, earlier)
            continue
        for r in results:
            tally["PASS" if r.verdict == "PASS" else "FAIL" if r.verdict.startswith("FAIL") else "not run"] += 1
        rates = "; ".join(f"{r.check.label}: {r.rate.k}/{r.rate.n}" for r in results if r.rate)
        summary.append(f"| [{claim.id}](#claim-{claim.id.replace('.', '-')}) | {verdict} | {rates or 'not run'} |")
        rows += [CHECK_HEADER, *(r.row for r in results)]
        if claim.note:
            rows += ["", claim.note]
        if figures is not None:
            rows += figures.section(claim, results, groups)
    return rows, tally, summary


def _host_text() -> str:
    """OS, CPU count and GPU; python and torch versions."""
    import torch

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores{gpu}; "
            f"python {platform.python_version()}, torch {torch.__version__}")


def _seed_cell(group: Group, metric: Optional[str]) -> str:
    """``0: 0.98, 1: 0.97`` (the metric of each completed seed)."""
    if not metric:
        return ""
    return ", ".join(f"{s}: {fmt(v)}" for s, run in group.by_seed() if (v := metric_value(run, metric)) is not None)


def _run_rows(jobs: list[Job], groups: dict[str, Group], status: dict[str, str]) -> list[str]:
    """One row per planned job: completed runs, per-seed and mean main metric, the paper's value."""
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
            f"{stat_cell(g.stat(metric) if metric else None)} | {pv.text() if pv else ''} | "
            f"{stat_cell(g.stat('nfe_forward'))} | {stat_cell(g.stat('params'))} | {ppar.text() if ppar else ''} | "
            f"{stat_cell(g.stat('wall_time_s'))} |")
    return lines


def _compare_rows(jobs: list[Job], groups: dict[str, Group], status: dict[str, str]) -> list[str]:
    """Ensemble vs separate runs (``NAME@separate``): per-seed metric and NFE, each check's rate on either."""
    pairs = [(j.label[: -len(SEPARATE)], j.label) for j in jobs if j.label.endswith(SEPARATE)]
    pairs = [(a, b) for a, b in pairs if status.get(a) == "ok" and status.get(b) == "ok"]
    if not pairs:
        return []
    values = seed_values(groups, status)
    lines = ["", "## Seed ensembles vs separate runs", "", ENSEMBLE_NOTE, "",
             "| run | metric | per seed: ensemble | per seed: separate | NFE fwd: ensemble / separate |",
             "|---|---|---|---|---|"]
    for base, sep in pairs:
        metric = main_metric(groups[base])
        lines.append(f"| {base} | {metric} | {_seed_cell(groups[base], metric)} | {_seed_cell(groups[sep], metric)} | "
                     f"{stat_cell(groups[base].stat('nfe_forward'))} / {stat_cell(groups[sep].stat('nfe_forward'))} |")
    swapped = dict(pairs)

    def separate_values(label: str, metric: str) -> Optional[dict[int, float]]:
        return values(swapped.get(label, label), metric)

    lines += ["", "| claim | check | seeds that hold: ensemble | separate runs |", "|---|---|---|---|"]
    for claim in CLAIMS:
        for check in claim.checks:
            if set(check.labels()) & set(swapped):
                got = [judge_seeds(check, v) for v in (values, separate_values)]
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
            "authors' settings (the paper's appendix and the official code): deviations fixed, and deviations kept "
            "with the reason.", "", "| experiment | audit |", "|---|---|",
            *(f"| {name} | {text.removeprefix('Audit').lstrip(' :') or 'not audited'} |" for name, text in rows)]


def render_reproduction(jobs: list[Job], others: list[Experiment], groups: dict[str, Group], budget: Budget,
                        seeds: tuple[int, ...], commands: list[str], wall_s: Optional[float],
                        figures: Optional[FigureSink] = None, earlier: Optional[dict] = None) -> str:
    """The text of ``REPRODUCTION.md``; ``commands``: the invocations that made the runs (the first
    is named in the page's "Made with" line, all of them listed below when there are several)."""
    status = job_status(jobs, groups)
    rows, tally, summary = claim_rows(groups, status, figures, earlier)
    first = commands[0].split("  #")[0] if commands else "nodex reproduce"  # a note may follow "  #"
    made = (f"`{first}`" if len(commands) <= 1 else
            f"`{first}` and {len(commands) - 1} more invocations on the same run folder (listed below)")
    carried = f", {tally['carried']} carried from the earlier page (not rerun)" if tally["carried"] else ""
    lines = [
        "# Reproduction of *Dissecting Neural ODEs* (Massaroli et al., NeurIPS 2020)", "",
        f"Budget **{budget.name}**: {budget.description}. Seeds: {', '.join(map(str, seeds))}.", "",
        f"Made with {made} on {_dt.date.today().isoformat()} ({_host_text()})"
        + (f" in {wall_s / 60:.1f} min of wall time." if wall_s is not None else "."),
        "Claims: the paper's headline results, registry `nodex/paper/claims.py` (pass rules: `nodex/paper/checks.py`; "
        "the paper's numbers: `nodex/paper/paper_values.yaml`); budgets: `configs/budget/`.", "",
        "Every check is judged on each seed alone (runs paired by seed) and holds when at least the fraction of "
        "seeds its claim states holds (*criterion*); *summary* gives the median, the worst seed and mean ± sample "
        "std over seeds.", "",
        f"**{tally['PASS']} checks pass, {tally['FAIL']} fail, {tally['not run']} not run{carried}** (a claim's "
        "experiment may be outside this budget or not selected).", "",
        "| claim | result | seeds that hold, per check |", "|---|---|---|", *summary, "", "## Claims", *rows,
        *_compare_rows(jobs, groups, status), "", "## Runs", "",
        "Per seed and mean ± sample std over the completed seeds; the paper's value where it reports one. "
        "Full tables: `nodex report DIR` on the run directories.", "",
        "| run | completed | seeds as | main metric | per seed | ours | paper | NFE fwd / step | params | "
        "params (paper) | wall s / run |", "|---|---|---|---|---|---|---|---|---|---|---|",
        *_run_rows(jobs, groups, status), *_audit_rows(jobs)]
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
