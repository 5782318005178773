"""scripts/solver_study.py: candidates run side by side through nodex reproduce, paired by job and seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import solver_study  # noqa: E402


def test_candidates_become_solver_overrides_and_outcomes_respect_the_metrics_direction():
    assert solver_study.solver_overrides("tsit5") == ["solver.method=tsit5"]
    assert solver_study.solver_overrides("dopri5:hairer") == ["solver.method=dopri5", "solver.step_rule=hairer"]
    assert solver_study.outcome("test/accuracy", 0.95, 0.96) == "better"
    assert solver_study.outcome("test/accuracy", 0.95, 0.9505) == "tie"
    assert solver_study.outcome("test/mse", 0.010, 0.012) == "worse"
    assert solver_study.outcome("test/mse", 0.010, 0.010001) == "tie"
    assert solver_study.outcome("test/nll", 1.5, 1.4) == "better"


@pytest.mark.slow
def test_two_candidates_run_side_by_side_and_the_table_pairs_their_seeds(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "scripts/solver_study.py", "--solvers", "dopri5,dopri5:hairer", "--seeds", "0,1",
           "--only", "reflection_vanilla", "--out", str(out), "trainer.max_steps=3", "trainer.plots=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {}
    for cand, folder in (("dopri5", "dopri5"), ("dopri5:hairer", "dopri5-hairer")):
        files = sorted((out / folder / "reflection_vanilla").rglob("result.json"))
        assert len(files) == 2
        results[cand] = [json.loads(f.read_text()) for f in files]
        assert all(r["status"] == "completed" and r["config"]["solver"]["method"] == "dopri5" for r in results[cand])
    assert {r["config"]["solver"]["step_rule"] for r in results["dopri5:hairer"]} == {"hairer"}
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| reflection_vanilla |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[1:3] == ["test/mse", "2"]
    for cand, cell in zip(("dopri5", "dopri5:hairer"), cells[3:5]):
        mse = [r["metrics"]["test/mse"] for r in results[cand]]
        assert cell.startswith(f"{sum(mse) / 2:.4g} ± "), (cell, mse)
    walls = [results[c][0]["wall_time_s"] for c in ("dopri5", "dopri5:hairer")]
    assert cells[-1] == f"{walls[1] / walls[0]:.2f}"
    assert "dopri5:hairer vs dopri5 over 1 job(s): time ratio geometric mean" in proc.stdout
