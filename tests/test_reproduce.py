"""nodex reproduce: budgets applied per experiment, claims judged into the page (written into --out
unless --report says otherwise), and the smoke budget end to end on a small subset."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from omegaconf import OmegaConf

import nodex.paper.running as running
from nodex.paper.checks import Check, Rate, judge_seeds, rate_of
from nodex.paper.claims import CLAIMS
from nodex.paper.experiments import audit, discover, header
from nodex.paper.figures import WIDTH, FigureSink
from nodex.paper.page import _summary_cell, check_row, collect, earlier_sections, render_reproduction, seed_values
from nodex.paper.planning import BUDGETS, Job, applicable, commands, plan, run_order, seed_blocks
from nodex.paper.probes import circle, outer_leak, predicted_class, probe
from nodex.paper.reproduce import reproduce_main
from nodex.paper.running import add_wall, completed_seeds, recorded_commands

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_apply_only_where_the_key_exists():
    cfg = OmegaConf.create({"data": {"n_train": 1024, "n_val": 10, "n_test": None}, "trainer": {"max_steps": 300}})
    out = applicable(cfg, ["data.n_train=64", "data.n_test=64", "data.noise=0.2",
                           "trainer.max_steps=3", "solver=rk4", "hydra.sweep.subdir=x"])
    assert out == ["data.n_train=64", "data.n_test=64", "trainer.max_steps=3", "solver=rk4", "hydra.sweep.subdir=x"]


def test_budgets_are_the_config_files():
    assert sorted(BUDGETS) == ["cpu", "full", "smoke"]
    smoke, cpu, full = BUDGETS["smoke"], BUDGETS["cpu"], BUDGETS["full"]
    assert smoke.seeds == (0,) and cpu.seeds == (0, 1, 2, 3, 4) and full.seeds == (0, 1, 2)
    assert "data.n_train=64" in smoke.overrides and not any("<=" in o for o in smoke.overrides)
    assert smoke.rules[0].where == (("data.name", ("digits", "mnist5k", "mnist", "cifar10")),)
    assert cpu.compare == ("reflection_*", "annuli_data_control") and cpu.separate == ("mnist5k_*",)
    assert full.needs_files and not full.set_threads and cpu.set_threads and not cpu.needs_files
    assert dict(cpu.seconds_per_seed)["annuli_data_control"] == 212.0


@pytest.mark.slow  # composes every experiment once (~0.3 s each)
def test_every_paper_experiment_is_planned_from_the_files():
    jobs, others = plan(BUDGETS["smoke"])
    labels = {j.label for j in jobs}
    papers = {e.name for e in discover() if "paper" in e.description.lower()}
    assert papers <= labels and not others
    assert {"galerkin_tracking@depth_none", "galerkin_tracking@depth_concat"} <= labels
    by = {j.label: j for j in jobs}
    for job in jobs:
        if job.experiment.startswith("table1_"):  # MNIST / CIFAR-10 files: full budget only
            assert job.skip and "reads dataset files" in job.skip
        else:
            assert job.skip is None, (job.label, job.skip)
            assert "trainer.max_steps=3" in job.overrides and "trainer.epochs=null" in job.overrides
    assert "solver.method=rk4" in by["digits_node"].overrides and "solver.method=rk4" not in by["reflection_vanilla"].overrides
    assert "data.n_train=64" in by["reflection_vanilla"].overrides
    assert by["galerkin_tracking@depth_none"].overrides[-1] == "model.field.depth=none"
    full, _ = plan(BUDGETS["full"], only=["table1_*", "reflection_vanilla"])
    assert all(j.skip is None and j.overrides == [] for j in full) and len(full) == 9
    extra, _ = plan(BUDGETS["cpu"], only=["reflection_vanilla"], extra=["trainer.device=cpu", "data.no_such_key=1"])
    assert extra[0].overrides == ["trainer.device=cpu"]


def _fake_result(out: Path, label: str, seed: int, metrics: dict, params: int, status: str = "completed",
                 error=None, sub: str | None = None) -> Path:
    run = out / label / (sub or f"seed{seed}")
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({
        "status": status, "error": error, "metrics": metrics, "nfe_forward": 20.0, "nfe_backward": 0.0,
        "params": params, "wall_time_s": 3.0, "seed": seed, "config": {"experiment_name": label.split("@")[0]},
        **({"ensemble_member": {"index": seed, "parent": str(run.parent)}} if "member-" in run.name else {}),
    }))
    return run


@pytest.mark.slow
def test_claims_are_judged_per_seed_from_the_runs(tmp_path, capsys):
    out = tmp_path / "runs"
    _fake_result(out, "reflection_data_control", 0, {"test/mse": 2e-4}, 257)
    _fake_result(out, "reflection_data_control", 1, {"test/mse": 4e-4}, 257)
    run = _fake_result(out, "reflection_vanilla", 0, {"test/mse": 0.3343}, 193)
    (run / "probes.json").write_text(json.dumps({"monotone_floor": 0.334}))
    run = _fake_result(out, "reflection_depthcat", 0, {"test/mse": 0.05}, 257)  # below the floor: a FAIL
    (run / "probes.json").write_text(json.dumps({"monotone_floor": 0.334}))
    _fake_result(out, "reflection_adaptive_depth", 0, {}, 195, status="failed", error="step 7: solver failed")
    report = tmp_path / "R.md"
    code = reproduce_main(["--budget", "cpu", "--only", "reflection_*", "--out", str(out), "--report-only",
                           "--report", str(report), "--compare", ""])
    assert code == 1  # a failed run
    text = report.read_text()
    assert ("| data-controlled fits (test MSE) | fits | ≤ 0.001 | **2/2** | 0: 0.0002, 1: 0.0004 | "
            "median 0.0003, worst 0.0004 (seed 1); mean 0.0003 ± 0.00014 | ≥ 80% of seeds (2/2) | PASS |") in text
    assert ("| data-controlled params | 257 | exactly 257 | **2/2** | 0: 257, 1: 257 | median 257, worst 257 (seed 0); "
            "mean 257 ± 0 | all seeds (2/2) | PASS |") in text
    floor = "| fails | -0.001 … +0.01 of probe/monotone_floor |"
    vanilla, depthcat = "vanilla fails at the monotone floor", "depth-concat fails at the monotone floor"
    assert f"| {vanilla} (test MSE) {floor} **1/1** | 0: 0.3343 (monotone_floor +0.0003) |" in text
    assert f"| {depthcat} (test MSE) {floor} **0/1** | 0: 0.05 (monotone_floor -0.28) ✗ |" in text
    assert text.count("| all seeds (1/1) | FAIL |") == 1
    assert ("| adaptive depth fits with a learned depth (test MSE) | fits | ≤ 0.001 and probe/mean_abs_depth ≥ 0.05 "
            "| – | not run | | ≥ 80% of seeds | FAIL (every run failed: reflection_adaptive_depth) |") in text
    assert "not run: not selected (--only)" in text  # e.g. the annuli claims
    assert "| reflection_data_control | 2/2 | separate | test/mse | 0: 0.0002, 1: 0.0004 | 0.0003 ± 0.00014 |" in text
    assert (f"| [3.6](#claim-3-6) | FAIL | data-controlled fits (test MSE): 2/2; {vanilla} (test MSE): 1/1; "
            f"{depthcat} (test MSE): 0/1; data-controlled params: 2/2 |") in text
    assert "step 7: solver failed" in text and "Budget **cpu**" in text
    assert "**3 checks pass, 2 fail," in text


def _lookup_from(table: dict) -> Callable:
    return lambda label, metric: table.get(label)


def test_rates_pair_runs_by_seed_and_count_against_the_criterion():
    values = _lookup_from({"dc": {0: 1.0, 1: 1.0, 2: 0.489, 3: 1.0, 4: 0.782}, "va": {0: 1.0, 1: 0.99, 2: 0.98, 4: 0.7}})
    out = judge_seeds(Check("x", "m", "ge", "dc", 0.99), values)
    assert [(o.seed, o.passed) for o in out] == [(0, True), (1, True), (2, False), (3, True), (4, False)]
    assert min(out, key=lambda o: o.margin).seed == 2
    rate = rate_of(out, 0.8)
    assert (rate.k, rate.n, rate.needed, rate.holds) == (3, 5, 4, False)
    assert rate.criterion() == "≥ 80% of seeds (4/5)"
    assert rate_of(out, 0.6).holds and Rate(5, 5, 1.0).criterion() == "all seeds (5/5)"
    assert not Rate(0, 0, 0.5).holds  # no seeds: never holds
    # lt_run pairs seed s of one run with seed s of the other; seed 3 has no vanilla run and is left out
    lt = judge_seeds(Check("x", "m", "lt_run", "va", "dc"), values)
    assert [(o.seed, o.passed, o.text) for o in lt] == [(0, False, "1 vs 1"), (1, True, "0.99 vs 1"),
                                                          (2, False, "0.98 vs 0.489"), (4, True, "0.7 vs 0.782")]
    assert judge_seeds(Check("x", "m", "ge", "zzz", 0.5), values) is None
    order = judge_seeds(Check("x", "m", "order", runs=(("dc",), ("va",)), tol=0.01), values)
    assert [o.passed for o in order] == [True, True, False, True]
    assert math.isnan(order[0].value) and order[2].margin == pytest.approx(0.489 - 0.98 + 0.01)


def test_claim_criteria_are_stated_and_deterministic_checks_need_every_seed():
    for claim in CLAIMS:
        assert 0.5 <= claim.min_rate <= 1 and claim.why_rate
        for check in claim.checks:
            if check.metric == "params":
                assert claim.rate_needed(check) == 1.0, (claim.id, check.label)


def test_ensemble_members_are_read_as_per_seed_results(tmp_path):
    out = tmp_path / "runs"
    label = "annuli_data_control"
    ens = out / label / "seeds0-2"
    for k, acc in enumerate((1.0, 0.489, 1.0)):
        _fake_result(out, label, k, {"test/accuracy": acc}, 229, sub=f"seeds0-2/member-{k}")
    (ens / "ensemble.json").write_text(json.dumps({"status": "completed", "kind": "ensemble", "size": 3}))
    jobs, _ = plan(BUDGETS["cpu"], only=[label], compare=())
    assert [(j.label, j.ensemble) for j in jobs] == [(label, True)]
    groups = collect(jobs, out)
    assert len(groups[label].runs) == 3  # the members, not the ensemble's parent
    values = seed_values(groups, {label: "ok"})
    assert values(label, "test/accuracy") == {0: 1.0, 1: 0.489, 2: 1.0}
    assert completed_seeds(out / label) == {0, 1, 2}


def test_seeds_run_as_one_ensemble_per_block_of_consecutive_seeds(tmp_path):
    assert seed_blocks([4, 0, 1, 2, 7, 8, 1]) == [(0, 1, 2), (4,), (7, 8)]
    job = Job("annuli_data_control", "annuli_data_control", ["trainer.max_steps=3"], ensemble=True)
    cmds = commands(job, tmp_path, (0, 1, 2, 4), 1, None)
    assert [seeds for seeds, _ in cmds] == [(0, 1, 2), (4,)]
    first, second = (cmd[cmd.index("train") + 1:] for _, cmd in cmds)
    assert first == ["experiment=annuli_data_control", "seed=0", "trainer.ensemble=3", "trainer.max_steps=3",
                     "trainer.num_threads=1", f"hydra.run.dir={tmp_path / 'annuli_data_control' / 'seeds0-2'}"]
    assert second[:3] == ["experiment=annuli_data_control", "seed=4", "trainer.max_steps=3"]
    job.ensemble = False
    (seeds, cmd), = commands(job, tmp_path, (0, 1, 2, 4), None, None)
    assert seeds == (0, 1, 2, 4) and "--multirun" in cmd and "seed=0,1,2,4" in cmd


@pytest.mark.slow  # composes the CNF and reflection experiments (~0.3 s each)
def test_cnfs_run_separately_and_compare_adds_separate_runs():
    jobs, _ = plan(BUDGETS["cpu"], only=["cnf_conditional", "reflection_vanilla"], compare=("reflection_*", "cnf_*"))
    assert [(j.label, j.ensemble) for j in jobs] == [
        ("cnf_conditional", False), ("reflection_vanilla", True), ("reflection_vanilla@separate", False)]
    assert jobs[2].overrides == jobs[1].overrides
    separate, _ = plan(BUDGETS["cpu"], only=["reflection_vanilla"], separate=True)
    assert [(j.label, j.ensemble) for j in separate] == [("reflection_vanilla", False)]
    by_budget, _ = plan(BUDGETS["cpu"], only=["mnist5k_node", "digits_node", "stacked_moons"])  # budget's list
    assert [(j.label, j.ensemble) for j in by_budget] == [("digits_node", True), ("mnist5k_node", False),
                                                          ("stacked_moons", True)]  # digits: members step alone
    order = [j.label for j in run_order([Job(n, n) for n in ("mnist5k_node", "reflection_vanilla", "annuli_vanilla")])]
    assert order == ["annuli_vanilla", "reflection_vanilla", "mnist5k_node"]


def test_figures_are_copied_small_for_the_first_and_the_worst_seed(tmp_path):
    from PIL import Image

    out = tmp_path / "runs"
    for seed, acc in ((0, 1.0), (1, 0.5)):
        run = _fake_result(out, "annuli_data_control", seed, {"test/accuracy": acc}, 229)
        (run / "plots").mkdir()
        Image.new("RGB", (1000, 800), (255, 255 * seed, 0)).save(run / "plots" / "decision_map.png")
    groups = collect([Job("annuli_data_control", "annuli_data_control")], out)
    status = {"annuli_data_control": "ok"}
    claim = next(c for c in CLAIMS if c.id == "3.7")
    results = [check_row(claim, check, seed_values(groups, status), status) for check in claim.checks[:1]]
    assert results[0].worst_failing == 1 and results[0].verdict == "FAIL"
    sink = FigureSink(tmp_path / "page" / "docs" / "reproduction", "docs/reproduction")
    lines = "\n".join(sink.section(claim, results, groups))
    names = sorted(p.name for p in (tmp_path / "page" / "docs" / "reproduction").iterdir())
    assert names == ["annuli_data_control_decision_map_seed0.png", "annuli_data_control_decision_map_seed1.png"]
    with Image.open(tmp_path / "page" / "docs" / "reproduction" / names[0]) as img:
        assert img.size == (WIDTH, 336) and img.mode == "P"
    assert '<img src="docs/reproduction/annuli_data_control_decision_map_seed1.png" width="315"' in lines
    assert "(2) `annuli_data_control`, decision map, seed 1 (worst failing seed)" in lines
    assert "`annuli_vanilla` decision map, seed -1: no figure (run not done or no plot)" in lines


def test_ensemble_and_separate_runs_are_compared_per_seed(tmp_path):
    out = tmp_path / "runs"
    for seed, (ens, sep) in enumerate(((2e-4, 3e-4), (5e-3, 4e-4))):
        _fake_result(out, "reflection_data_control", seed, {"test/mse": ens}, 257, sub=f"seeds0-1/member-{seed}")
        _fake_result(out, "reflection_data_control@separate", seed, {"test/mse": sep}, 257)
    jobs = [Job("reflection_data_control", "reflection_data_control", ensemble=True),
            Job("reflection_data_control@separate", "reflection_data_control")]
    groups = collect(jobs, out)
    text = render_reproduction(jobs, [], groups, BUDGETS["cpu"], (0, 1), [], 60.0)
    assert ("| reflection_data_control | test/mse | 0: 0.0002, 1: 0.005 | 0: 0.0003, 1: 0.0004 | 20 / 20 |") in text
    assert "| 3.6 | data-controlled fits (test MSE) | 1/2 | 2/2 |" in text
    assert "| 3.6 | data-controlled params | 2/2 | 2/2 |" in text
    assert "in 1.0 min of wall time." in text


@pytest.mark.slow
def test_smoke_budget_end_to_end_on_two_experiments(tmp_path):
    out, report = tmp_path / "runs", tmp_path / "REPRODUCTION.md"
    proc = subprocess.run(
        [sys.executable, "-m", "nodex.cli", "reproduce", "--budget", "smoke",
         "--only", "reflection_vanilla,reflection_data_control",
         "--jobs", "2", "--out", str(out), "--report", str(report)],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert sum("1/1 completed" in ln for ln in lines) == 2  # one progress line per experiment
    for label, params in (("reflection_vanilla", 193), ("reflection_data_control", 257)):
        result = json.loads((out / label / "seed0" / "result.json").read_text())
        assert result["status"] == "completed" and result["steps"] == 3 and result["params"] == params
        assert result["config"]["data"]["n_train"] == 64 and result["config"]["experiment_name"] == label
    text = report.read_text()
    assert ("| data-controlled params | 257 | exactly 257 | **1/1** | 0: 257 | median 257, worst 257 (seed 0); mean 257 | "
            "all seeds (1/1) | PASS |") in text
    assert "| reflection_vanilla | 1/1 | separate | test/mse | 0: " in text
    assert "Made with `nodex reproduce --budget smoke --only reflection_vanilla,reflection_data_control" in text


class _Half:
    """A stand-in classifier: scalar readout y_hat = x_0 (class 1 where x_0 > 0.5)."""

    def __call__(self, x):
        return SimpleNamespace(y_hat=x[:, :1])


def test_leak_probe_classifies_the_noise_free_outer_ring_and_is_cached(tmp_path):
    points = circle(2.0, 8)
    assert points.shape == (8, 2) and torch.allclose(points.norm(dim=1), torch.full((8,), 2.0))
    inner = predicted_class(_Half(), circle(2.0, 20000), batch=3000) == 1
    assert float(inner.float().mean()) == pytest.approx(math.acos(0.25) / math.pi, abs=1e-4)
    calls = []
    assert probe(tmp_path, "outer_leak", lambda d: calls.append(d) or 0.25) == 0.25
    assert probe(tmp_path, "outer_leak", lambda d: calls.append(d) or 0.5) == 0.25 and calls == [tmp_path]
    assert json.loads((tmp_path / "probes.json").read_text()) == {"outer_leak": 0.25}
    (tmp_path / "nowhere").mkdir()
    assert probe(tmp_path / "nowhere", "outer_leak", outer_leak) is None  # no checkpoint: recorded, not fatal
    saved = json.loads((tmp_path / "nowhere" / "probes.json").read_text())
    assert saved["outer_leak"] is None and "nowhere" in saved["outer_leak_error"]


def test_annuli_runs_get_the_leak_probe_as_a_metric(tmp_path):
    out = tmp_path / "runs"
    run = _fake_result(out, "annuli_vanilla", 0, {"test/accuracy": 1.0}, 1221)
    (run / "probes.json").write_text(json.dumps({"outer_leak_200k": 0.0031}))
    _fake_result(out, "reflection_vanilla", 0, {"test/mse": 0.33}, 193)
    groups = collect([Job("annuli_vanilla", "annuli_vanilla"), Job("reflection_vanilla", "reflection_vanilla")], out)
    assert groups["annuli_vanilla"].runs[0].result["metrics"]["probe/outer_leak_200k"] == 0.0031
    assert "probe/outer_leak_200k" not in groups["reflection_vanilla"].runs[0].result["metrics"]
    claim = next(c for c in CLAIMS if c.id == "3.7")
    check = next(c for c in claim.checks if c.run == "annuli_vanilla")
    result = check_row(claim, check, seed_values(groups, {"annuli_vanilla": "ok"}), {})
    assert result.verdict == "PASS" and "| **1/1** | 0: 0.0031; classifies 1 |" in result.row
    assert "all seeds (1/1)" in result.row
    lt = Check("x", "m", "lt_run", "va", "dc")
    values = _lookup_from({"dc": {0: 1.0, 1: 0.9}, "va": {0: 0.5, 1: 0.85}})
    assert (_summary_cell(lt, judge_seeds(lt, values), values)
            == "median 0.675, closest seed 1 (0.85 vs 0.9); mean 0.675 ± 0.25")


def test_the_config_audit_is_read_from_each_experiments_header(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# @package _global_\n# Paper E2: the description.\n#\n# Audit (paper App. E2): fixed: a; kept: b\n"
                    "# because c.\n#\n# Other notes.\ndefaults: []\n")
    assert audit(path) == "Audit (paper App. E2): fixed: a; kept: b because c."
    assert header(path) == "Paper E2: the description."  # nodex list shows the description only
    jobs = [Job("annuli_data_control", "annuli_data_control", ensemble=True)]
    text = render_reproduction(jobs, [], {}, BUDGETS["cpu"], (0, 1), [], None)
    assert "| annuli_data_control | (paper App. E1 and its data-control section): fixed: the last layer is NOT" in text


def test_threads_per_experiment_default_to_cores_over_jobs_and_can_be_set(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(running, "run_one", lambda job, out, seeds, threads, *rest: (seen.append(threads) or "ok", True))
    monkeypatch.setattr(running.os, "cpu_count", lambda: 8)
    jobs = [Job("reflection_vanilla", "reflection_vanilla")]
    running.run_jobs(jobs, BUDGETS["cpu"], tmp_path, (0,), 2, None, False, None)
    running.run_jobs(jobs, BUDGETS["cpu"], tmp_path, (0,), 1, None, False, None, threads=1)
    running.run_jobs(jobs, BUDGETS["full"], tmp_path, (0,), 2, None, False, None)  # the GPU budget leaves them alone
    assert seen == [4, 1, None]
    assert capsys.readouterr().out.count("reflection_vanilla  ok") == 3


def test_wall_time_is_the_union_of_the_recorded_spans(tmp_path):
    assert add_wall(tmp_path, None) is None
    assert add_wall(tmp_path, (100.0, 400.0)) == 300.0
    assert add_wall(tmp_path, (200.0, 500.0)) == 400.0  # overlaps: counted once
    assert add_wall(tmp_path, (1000.0, 1060.0), "nodex reproduce --resume") == 460.0  # a later --resume
    assert add_wall(tmp_path, None) == 460.0 and len(json.loads((tmp_path / "wall.json").read_text())["spans"]) == 3
    assert recorded_commands(tmp_path) == ["nodex reproduce --resume"]
    jobs = [Job("reflection_vanilla", "reflection_vanilla")]
    text = render_reproduction(jobs, [], {}, BUDGETS["cpu"], (0,), ["A --x", "B --resume"], 460.0)
    assert "Made with `A --x` and 1 more invocations on the same run folder (listed below) on " in text
    assert " in 7.7 min of wall time." in text and "1. `A --x`\n2. `B --resume`\n" in text


def test_resume_reruns_only_missing_seeds_and_sets_failed_attempts_aside(tmp_path, monkeypatch):
    out = tmp_path / "runs"
    for k in range(3):
        _fake_result(out, "annuli_vanilla", k, {}, 1221, status="failed", error="stopped", sub=f"seeds0-2/member-{k}")
    _fake_result(out, "annuli_vanilla", 3, {"test/accuracy": 1.0}, 1221, sub="seed3")
    ran = []
    monkeypatch.setattr(running.subprocess, "run", lambda cmd, **kw: ran.append(cmd) or SimpleNamespace(returncode=0))
    job = Job("annuli_vanilla", "annuli_vanilla", ensemble=True)
    line, complete = running.run_one(job, out, (0, 1, 2, 3), 1, None, True, None, {})
    assert [c[c.index("train") + 1:c.index("train") + 4] for c in ran] == [
        ["experiment=annuli_vanilla", "seed=0", "trainer.ensemble=3"]]
    assert sorted(p.name for p in (out / "annuli_vanilla").iterdir()) == ["reproduce.log", "seed3"]
    aside = list((out / ".failed" / "annuli_vanilla").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("seeds0-2-") and (aside[0] / "member-2" / "result.json").exists()
    assert line.startswith("1/4 completed") and "see " in line and not complete  # the stub trained nothing
    assert running.run_one(job, out, (3,), 1, None, True, None, {}) == ("already done (--resume)", True)


@pytest.mark.slow
def test_the_page_goes_into_out_unless_report_says_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "REPRODUCTION.md").write_text("the committed page\n")
    out = tmp_path / "runs"
    _fake_result(out, "reflection_data_control", 0, {"test/mse": 2e-4}, 257)
    args = ["--budget", "cpu", "--only", "reflection_data_control", "--out", str(out), "--report-only", "--compare", ""]
    assert reproduce_main(args) == 0
    assert (tmp_path / "REPRODUCTION.md").read_text() == "the committed page\n"  # untouched
    text = (out / "REPRODUCTION.md").read_text()
    assert "Made with `nodex reproduce --budget cpu --only reflection_data_control --out " in text
    assert reproduce_main([*args, "--report", str(tmp_path / "page" / "R.md")]) == 0
    page = (tmp_path / "page" / "R.md").read_text()
    assert "| data-controlled fits (test MSE) | fits | ≤ 0.001 | **1/1** |" in page


@pytest.mark.slow  # composes two experiments (~0.3 s each)
def test_the_dry_run_plan_says_what_compare_adds(capsys):
    assert reproduce_main(["--budget", "cpu", "--only", "reflection_vanilla,reflection_depthcat", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == ("# --compare adds 2 jobs (10 separate runs: reflection_depthcat@separate, "
                         "reflection_vanilla@separate), about 2 min on one core (configs/budget/cpu.yaml: "
                         "seconds_per_seed); --compare '' leaves them out")
    assert sum("hydra.sweep.dir=" in ln and "@separate" in ln for ln in lines) == 2
    assert reproduce_main(["--budget", "cpu", "--only", "reflection_vanilla", "--dry-run", "--compare", ""]) == 0
    assert "--compare adds" not in capsys.readouterr().out


def test_claims_not_rerun_are_carried_from_the_earlier_page_and_say_so(tmp_path):
    earlier = "\n".join([
        "Budget **cpu**: five seeds.", "", "Made with `nodex reproduce --budget cpu` on 2026-12-06 (Linux).", "",
        "| claim | result | seeds that hold, per check |", "|---|---|---|",
        "| [3.7](#claim-3-7) | PASS | vanilla leaks (outer ring classified inner): 5/5 |",
        "| [3.8](#claim-3-8) | not run | not run |", "", "## Claims", "",
        '<a id="claim-3-7"></a>', "", "### 3.7. Annuli", "", "Source: old.", "",
        "| check | paper | pass if (per seed) | seeds that hold |", "|---|---|---|---|",
        "| vanilla leaks (outer ring classified inner) | leaks | ≥ 5e-05 | **5/5** |", "", "An old note.",
        '<p><img src="docs/reproduction/annuli_vanilla_decision_map_seed0.png" width="315"></p>', "",
        '<a id="claim-3-8"></a>', "", "### 3.8. Depth", "", "## Runs", ""])
    sections = earlier_sections(earlier)
    assert set(sections) == {"3.7", "made"} and sections["made"] == "budget cpu, made on 2026-12-06"
    assert sections["3.7"]["lines"][-1].startswith('<p><img src="docs/reproduction/annuli_vanilla_decision_map')
    jobs = [Job("reflection_vanilla", "reflection_vanilla")]
    text = render_reproduction(jobs, [], {}, BUDGETS["cpu"], (0,), [], None, earlier=sections)
    assert ("| [3.7](#claim-3-7) | not rerun (earlier checks: PASS) | vanilla leaks (outer ring classified inner): "
            "5/5 |") in text
    assert ("**Not rerun here.** The table and figures below are the earlier page's (budget cpu, made on 2026-12-06), "
            "with its per-seed values; its runs are not in this run folder. **Judged by the earlier checks**") in text
    assert "| vanilla leaks (outer ring classified inner) | leaks | ≥ 5e-05 | **5/5** |" in text
    assert "An old note." not in text and "| [3.8](#claim-3-8) | not run | not run |" in text
    assert ", 6 carried from the earlier page (not rerun)**" in text


def test_reproduce_fails_when_an_experiment_ends_short_of_its_seeds_without_a_record(tmp_path, monkeypatch, capsys):
    """A command that wrote no result.json (a bad override, a timeout) made a page of '0 runs, 0 failed' and exit 0."""
    out = tmp_path / "runs"
    _fake_result(out, "reflection_vanilla", 0, {"test/mse": 0.3343}, 193)  # the other experiment has its run
    monkeypatch.setattr(running.subprocess, "run", lambda cmd, **kw: SimpleNamespace(returncode=2))
    code = reproduce_main(["--budget", "smoke", "--only", "reflection_vanilla,reflection_depthcat", "--seeds", "0",
                           "--out", str(out), "--resume", "--report", str(tmp_path / "R.md"), "--compare", ""])
    out_text = capsys.readouterr().out
    assert code == 1 and "reflection_depthcat" in out_text and "0/1 completed" in out_text
    assert "1 experiment(s) short of their seeds (see each one's reproduce.log)" in out_text


def test_a_page_with_no_runs_is_not_written_and_figures_of_other_pages_stay(tmp_path, capsys):
    """--report-only on a folder with no runs (a typo in --out) replaced the committed page with an empty one and
    deleted every committed figure; --figures naming another page's folder deleted its figures too."""
    page, figures = tmp_path / "REPRODUCTION.md", tmp_path / "docs" / "reproduction"
    figures.mkdir(parents=True)
    page.write_text('committed <img src="docs/reproduction/a.png">')
    (figures / "a.png").write_bytes(b"png")
    code = reproduce_main(["--budget", "cpu", "--out", str(tmp_path / "typo"), "--report-only", "--report", str(page)])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == (f"reproduce: error: no runs of the selected experiments under {tmp_path / 'typo'}"
                                         ": nothing to report (give the --out of an earlier reproduce, or run without "
                                         "--report-only); nothing was written")
    assert page.read_text().startswith("committed") and (figures / "a.png").exists()
    out = tmp_path / "runs"
    _fake_result(out, "reflection_vanilla", 0, {"test/mse": 0.3343}, 193)
    assert reproduce_main(["--budget", "cpu", "--only", "reflection_vanilla", "--out", str(out), "--report-only",
                           "--report", str(tmp_path / "elsewhere" / "R.md"), "--figures", str(figures),
                           "--compare", ""]) in (0, 1)
    assert (figures / "a.png").exists()  # the committed page's figure: not this page's to remove


def test_seeds_that_are_not_integers_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        reproduce_main(["--budget", "smoke", "--seeds", "0,two", "--dry-run"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == ("nodex: error: --seeds 0,two: give comma-separated integers, e.g. --seeds "
                                               "0,1,2; see nodex reproduce --help")


@pytest.mark.parametrize("flag, value", [("--jobs", "0"), ("--threads", "-1"), ("--timeout", "-5"), ("--timeout", "nan")])
def test_counts_and_timeouts_that_are_not_positive_are_one_line(capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        reproduce_main(["--budget", "smoke", flag, value, "--dry-run"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().startswith(f"nodex: error: {flag} ")
