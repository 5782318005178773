"""The benchmark and GPU-check scripts run (on the CPU) and report what they claim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_gpu_check_cpu_half_runs_and_counts_40_nfe():
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--cpu-only", "--steps", "1"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and "ms/step" not in ln]
    assert len(rows) == 3 and all("| 40/0 |" in r and r.endswith("| ok |") for r in rows)


@pytest.mark.slow
def test_bench_paper_suite_covers_every_variant_with_the_right_baselines():
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", "--suite", "paper", "--steps", "1", "--rounds", "1", "--warmup", "0", "--no-torchdyn"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in proc.stdout.splitlines() if ln.startswith("| ") and "variant" not in ln]
    impls: dict[str, set] = {}
    for variant, _, impl, *_, vs in rows:
        impls.setdefault(variant, set()).add(impl)
    assert len(impls) == 10 and all({"nodex", "nodex on torchdiffeq"} <= v for v in impls.values())
    # a plain torchdiffeq model only where the field is a plain first-order MLP
    plain = {k for k, v in impls.items() if "torchdiffeq" in v}
    assert plain == {"vanilla (annuli, adjoint)", "vanilla (annuli, autograd)", "depth-concat", "zero-augmented (ANODE)", "input-layer augmented (IL-NODE)"}


def test_bench_compares_nodex_with_plain_torchdiffeq_at_equal_nfe():
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", "solver=rk4", "--steps", "1", "--rounds", "1", "--warmup", "1", "--no-torchdyn"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {ln.split("|")[1].strip(): ln.split("|") for ln in proc.stdout.splitlines() if ln.startswith("| ") and "implementation" not in ln}
    assert set(rows) == {"nodex", "nodex on torchdiffeq", "torchdiffeq", "hand-written rk4"}
    assert all(r[5].strip() == "40" for r in rows.values())  # same forward NFE everywhere
    assert rows["torchdiffeq"][8].strip() == "1.000" and rows["torchdiffeq"][9].strip() == "1.000"


@pytest.mark.parametrize("model,columns", [("model=vanilla", 7), ("model=node_conv", 5)], ids=["batched", "vmap"])
def test_bench_ensemble_reports_a_speed_up_row_per_batch(model, columns):
    """A row per batch size; the vmap-only ensemble column only where the field has a batched form."""
    proc = subprocess.run(
        [sys.executable, "scripts/bench_ensemble.py", "--members", "2", "--batches", "8,16", "--rounds", "2", "--steps", "1", model, *(["data=digits"] if "conv" in model else [])],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("batched MLP field" if columns == 7 else "ensemble: vmap") in proc.stdout.splitlines()[0]
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in proc.stdout.splitlines() if ln.startswith("| ") and "batch" not in ln and "---" not in ln]
    assert [r[0] for r in rows] == ["8", "16"] and all(len(r) == columns and float(r[3].strip("*x")) > 0 for r in rows)


def test_adjoint_accuracy_script_reports_nodex_equal_to_torchdiffeq():
    proc = subprocess.run([sys.executable, "scripts/adjoint_accuracy.py"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {(c[0], c[1]): c for c in ([x.strip() for x in ln.split("|")[1:-1]] for ln in proc.stdout.splitlines() if ln.startswith("| ") and "tol" not in ln and "---" not in ln)}
    for tol in ("0.0001", "1e-05"):
        ours, ref = rows[("nodex adjoint", tol)], rows[("torchdiffeq adjoint", tol)]
        assert ours[2] == ref[2] and ours[3] == ref[3]  # same gradient error and NFE
        assert float(ours[2]) < 10 * float(tol)


def test_time_to_accuracy_script_stops_at_the_target():
    proc = subprocess.run(
        [sys.executable, "scripts/bench_time_to_accuracy.py", "--seeds", "0", "--max-steps", "20", "--target", "0.5", "--no-torchdyn"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = next(ln for ln in proc.stdout.splitlines() if ln.startswith("| nodex |"))
    steps = row.split("|")[3].strip()
    assert steps in {"10", "20"}  # checked every 10 steps; 50% is reached at once


def _work_precision():
    import importlib.util

    spec = importlib.util.spec_from_file_location("work_precision", ROOT / "scripts" / "work_precision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_work_precision_front_interpolates_log_log_and_refuses_to_extrapolate():
    front_time = _work_precision().front_time
    # (error, ms): the 3rd point is slower and less accurate than the 2nd, so it is off the front
    points = [(1e-1, 10.0), (1e-3, 40.0), (1e-2, 50.0)]
    assert front_time(points, 1e-2) == pytest.approx(20.0)  # halfway in log error -> geometric mean of 10 and 40
    assert front_time(points, 1e-3) == pytest.approx(40.0)
    assert front_time(points, 0.5) == 10.0  # the cheapest point already beats it: its time, an upper bound
    assert front_time(points, 1e-4) is None  # below every measured error


def test_work_precision_compares_each_sides_best_solver_at_equal_error(capsys):
    # (tol, error, ms): torchdyn's dopri5 point at 1e-2 and tsit5 point at 1e-3 form its front (tsit5's
    # 1e-2 at 50 ms is off it); nodex's front mixes its dopri5 (1e-2 at 10 ms) and tsit5 (1e-3 at 12 ms)
    # torchdyn's dopri5 at 1e-2 is cheap and inaccurate (gradient error 0.5): nodex's cheapest point beats that
    # error at 10 ms, a ratio of 2 that the summary over gradient errors <= 10% leaves out
    points = {
        "nodex backprop": [(1e-3, 1e-2, 10.0), (1e-5, 1e-4, 40.0)], "nodex tsit5 backprop": [(1e-3, 1e-3, 12.0)],
        "torchdyn backprop": [(1e-3, 1e-2, 20.0), (1e-2, 0.5, 5.0)],
        "torchdyn tsit5 backprop": [(1e-3, 1e-3, 30.0), (1e-4, 1e-2, 50.0)],
    }
    _work_precision().print_equal_error(points)
    lines = capsys.readouterr().out.splitlines()
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines if ln.startswith("| backprop")]
    expected = [("torchdyn backprop", "2.00"), ("torchdyn backprop", "0.50"), ("torchdyn tsit5 backprop", "0.40"),
                ("worst ratio", "2.00"), ("worst ratio at gradient errors <= 10%", "0.50")]
    assert [(r[1], r[-1]) for r in rows] == expected


def test_work_precision_script_errors_fall_with_the_tolerance():
    proc = subprocess.run(
        [sys.executable, "scripts/work_precision.py", "--no-torchdyn", "--pretrain", "20", "--tols", "1e-3,1e-5", "--rounds", "1", "--steps", "1"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {(c[0], c[1]): c for c in ([x.strip() for x in ln.split("|")[1:-1]] for ln in proc.stdout.splitlines()) if c and c[0].startswith("nodex")}
    # nodex's own extra tolerance, 3x below the tightest: its front reaches the errors its rival reaches
    tols = ("0.001", "1e-05", "3.33333e-06")
    assert set(rows) == {(f"nodex {s}", t) for s in ("backprop", "adjoint") for t in tols}
    for sens in ("backprop", "adjoint"):
        loose, tight = float(rows[(f"nodex {sens}", "0.001")][3]), float(rows[(f"nodex {sens}", "1e-05")][3])
        assert tight < loose / 30 and tight < 1e-3  # two decades of tolerance buy well over one of gradient accuracy
        nfe = {t: int(rows[(f"nodex {sens}", t)][2].split("/")[0]) for t in tols}
        assert nfe["3.33333e-06"] > nfe["1e-05"] > nfe["0.001"]


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _StandInGraph:
    """The observable contract of a CUDA graph, on a CPU: the captured step trains once on its
    batch (here at capture, where a graph would run it at its first replay), and every later
    replay trains on the static inputs and writes the results into the captured outputs."""

    def eager(self, step, X, y):
        return step(X, y)

    def capture(self, step, X, y):
        self.step, self.X, self.y, self.pending = step, X, y, True
        self.out = step(X, y)
        return self.out

    def replay(self):
        if self.pending:  # the capture's own batch: already trained once
            self.pending = False
            return
        loss, parts, out, _, _ = self.step(self.X, self.y)
        self.out[0].copy_(loss)
        for k, v in parts.items():
            self.out[1][k].copy_(v)


def test_gpu_check_plumbing_runs_on_a_cpu_with_a_stand_in_graph(tmp_path, capsys):
    gpu_check = _gpu_check()
    assert gpu_check.check_cuda_graph(8, tmp_path, device="cpu", backend_factory=_StandInGraph)
    assert gpu_check.check_adaptive(1, tmp_path, devices=("cpu", "cpu"))
    assert gpu_check.check_ensemble(3, tmp_path, devices=("cpu", "cpu"), cases={"Galërkin": ["model=galnode", "data=rings"]})
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "ms/step" not in ln and "NFE fwd (cpu" not in ln]
    assert len(rows) == 5 and all(r.endswith("| ok |") for r in rows), rows


def test_bench_threads_times_both_thread_counts_and_reports_auto():
    proc = subprocess.run(
        [sys.executable, "scripts/bench_threads.py", "--competitors", "1", "--rounds", "1", "--steps", "1",
         "model.field.hidden=[8]", "data.n_train=64"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "threads=1:" in proc.stdout and "auto chose 1 thread(s)" in proc.stdout  # a small field: one thread
