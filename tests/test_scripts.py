"""The benchmark and GPU-check scripts run (on the CPU) and report what they claim."""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "scripts" / "bench"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table line (text after its last ``|`` is not a cell)."""
    return [c.strip() for c in line.strip()[: line.strip().rindex("|")].split("|")[1:]]


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text`` as rows keyed by their header cells. A table is a ``|`` line followed by
    a ``|---`` line; its rows are the later ``|`` lines up to the next table (other lines between are skipped)."""
    lines = text.splitlines()
    starts = [i for i in range(len(lines) - 1) if lines[i].startswith("|") and lines[i + 1].startswith("|---")]
    tables = []
    for start, end in zip(starts, [*starts[1:], len(lines)]):
        header = _cells(lines[start])
        rows = [ln for ln in lines[start + 2 : end] if ln.startswith("|")]
        tables.append([dict(zip(header, _cells(row))) for row in rows])
    return tables


def test_markdown_tables_key_cells_by_header_and_skip_text_between_rows():
    text = "title\n| a | b |  note\n|---|---|\nsome text\n| 1 | 2 |\n\n| c |\n|---|\n| 3 |\n"
    assert markdown_tables(text) == [[{"a": "1", "b": "2"}], [{"c": "3"}]]


def _run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """``python scripts/bench/NAME ARGS`` run in this process (``runpy``, as ``__main__``, from the repository root,
    on one thread: the autouse fixture resets it after), saving a process start (~5 s of imports) per script; it must
    exit 0. Its stdout and stderr come back as a finished process's would."""
    out, err = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_path = sys.argv, os.getcwd(), list(sys.path)
    sys.argv = [str(BENCH / name), *args]
    sys.path.insert(0, str(BENCH))  # as `python scripts/bench/NAME` puts the script's folder first
    os.chdir(ROOT)
    code: object = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(BENCH / name), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    assert returncode == 0, f"{code}\n{err.getvalue()[-2000:]}"
    return subprocess.CompletedProcess([name, *args], returncode, out.getvalue(), err.getvalue())


def _bench_module(name: str):
    """``scripts/bench/NAME.py`` as a module (its ``import common`` finds the helper beside it)."""
    import importlib.util

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_cpu_half_runs_and_counts_40_nfe():
    proc = _run_script("gpu_check.py", "--cpu-only", "--steps", "1")
    (rows,) = markdown_tables(proc.stdout)
    assert len(rows) == 3 and all(r["NFE fwd/bwd"] == "40/0" and r["check"] == "ok" for r in rows), rows


@pytest.mark.slow
def test_bench_paper_suite_covers_every_variant_with_the_right_baselines():
    proc = _run_script("bench.py", "--suite", "paper", "--steps", "1", "--rounds", "1", "--warmup", "0",
                       "--no-torchdyn")
    (rows,) = markdown_tables(proc.stdout)
    impls: dict[str, set] = {}
    for row in rows:
        impls.setdefault(row["variant"], set()).add(row["implementation"])
    assert len(impls) == 10 and all({"nodex", "nodex on torchdiffeq"} <= v for v in impls.values())
    # a plain torchdiffeq model only where the field is a plain first-order MLP
    plain = {k for k, v in impls.items() if "torchdiffeq" in v}
    assert plain == {"vanilla (annuli, adjoint)", "vanilla (annuli, autograd)", "depth-concat",
                     "zero-augmented (ANODE)", "input-layer augmented (IL-NODE)"}


@pytest.mark.slow
def test_bench_compares_nodex_with_plain_torchdiffeq_at_equal_nfe():
    proc = _run_script("bench.py", "solver=rk4", "--steps", "1", "--rounds", "1", "--warmup", "1", "--no-torchdyn")
    (table,) = markdown_tables(proc.stdout)
    rows = {row["implementation"]: row for row in table}
    assert set(rows) == {"nodex", "nodex on torchdiffeq", "torchdiffeq", "hand-written rk4"}
    assert all(r["NFE fwd"] == "40" for r in rows.values())  # same forward NFE everywhere
    assert rows["torchdiffeq"]["ratio vs baseline (wall)"] == "1.000" and rows["torchdiffeq"]["(CPU time)"] == "1.000"
    assert all(r["baseline"] == "torchdiffeq" for r in rows.values())


@pytest.mark.parametrize("model,columns", [("model=vanilla", 7), ("model=node_conv", 5)], ids=["batched", "vmap"])
@pytest.mark.slow
def test_bench_ensemble_reports_a_speed_up_row_per_batch(model, columns):
    """A row per batch size; the vmap-only ensemble column only where the field has a batched form."""
    data = ["data=digits"] if "conv" in model else []
    proc = _run_script("bench_ensemble.py", "--members", "2", "--batches", "8,16", "--rounds", "2", "--steps", "1",
                       model, *data)
    assert ("batched MLP field" if columns == 7 else "ensemble: vmap") in proc.stdout.splitlines()[0]
    (rows,) = markdown_tables(proc.stdout)
    assert [r["batch"] for r in rows] == ["8", "16"] and all(len(r) == columns for r in rows)
    assert all(float(r["speed-up (wall)"].strip("*x")) > 0 for r in rows)
    assert all(float(r["speed-up (CPU time)"].strip("x")) > 0 for r in rows)
    assert all(("speed-up vmap only (wall)" in r) == (columns == 7) for r in rows)


@pytest.mark.slow
def test_adjoint_accuracy_script_reports_nodex_equal_to_torchdiffeq():
    proc = _run_script("adjoint_accuracy.py")
    (table,) = markdown_tables(proc.stdout)
    rows = {(r["implementation"], r["tol"]): r for r in table}
    for tol in ("0.0001", "1e-05"):
        ours, ref = rows[("nodex adjoint", tol)], rows[("torchdiffeq adjoint", tol)]
        assert ours == {**ref, "implementation": "nodex adjoint"}  # same gradient error and NFE
        assert float(ours["relative gradient error"]) < 10 * float(tol)


@pytest.mark.slow
def test_time_to_accuracy_script_stops_at_the_target():
    proc = _run_script("bench_time_to_accuracy.py", "--seeds", "0", "--max-steps", "20", "--target", "0.5",
                       "--no-torchdyn")
    (table,) = markdown_tables(proc.stdout)
    rows = {r["recipe"]: r for r in table}
    assert rows["nodex"]["steps"] in {"10", "20"}  # checked every 10 steps; 50% is reached at once
    assert rows["torchdyn"]["steps"] == "—"  # --no-torchdyn: not run


def _work_precision():
    return _bench_module("work_precision")


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
    (table,) = markdown_tables(capsys.readouterr().out)
    rows = [r for r in table if r["sensitivity"] == "backprop"]
    expected = [("torchdyn backprop", "2.00"), ("torchdyn backprop", "0.50"), ("torchdyn tsit5 backprop", "0.40"),
                ("worst ratio", "2.00"), ("worst ratio at gradient errors <= 10%", "0.50")]
    assert [(r["torchdyn"], r["nodex / torchdyn"]) for r in rows] == expected


@pytest.mark.slow
def test_work_precision_script_errors_fall_with_the_tolerance():
    proc = _run_script("work_precision.py", "--no-torchdyn", "--pretrain", "20", "--tols", "1e-3,1e-5", "--rounds", "1",
                       "--steps", "1")
    (table,) = markdown_tables(proc.stdout)  # --no-torchdyn: no equal-error table
    rows = {(r["implementation"], r["tol"]): r for r in table}
    # nodex's own extra tolerance, 3x below the tightest: its front reaches the errors its rival reaches
    tols = ("0.001", "1e-05", "3.33333e-06")
    assert set(rows) == {(f"nodex {s}", t) for s in ("backprop", "adjoint") for t in tols}
    for sens in ("backprop", "adjoint"):
        error = {t: float(rows[(f"nodex {sens}", t)]["relative gradient error"]) for t in tols}
        loose, tight = error["0.001"], error["1e-05"]
        assert tight < loose / 30 and tight < 1e-3  # two decades of tolerance buy well over one of gradient accuracy
        nfe = {t: int(rows[(f"nodex {sens}", t)]["NFE fwd/bwd"].split("/")[0]) for t in tols}
        assert nfe["3.33333e-06"] > nfe["1e-05"] > nfe["0.001"]


def _gpu_check():
    return _bench_module("gpu_check")


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


@pytest.mark.slow
def test_gpu_check_plumbing_runs_on_a_cpu_with_a_stand_in_graph(tmp_path, capsys):
    gpu_check = _gpu_check()
    assert gpu_check.check_cuda_graph(8, tmp_path, device="cpu", backend_factory=_StandInGraph)
    assert gpu_check.check_adaptive(1, tmp_path, devices=("cpu", "cpu"))
    cases = {"Galërkin": ["model=galnode", "data=rings"]}
    assert gpu_check.check_ensemble(3, tmp_path, devices=("cpu", "cpu"), cases=cases)
    tables = markdown_tables(capsys.readouterr().out)  # cuda graph, dopri5, ensemble
    assert [len(t) for t in tables] == [2, 2, 1] and all(r["check"] == "ok" for t in tables for r in t), tables


@pytest.mark.slow
def test_bench_threads_times_both_thread_counts_and_reports_auto():
    proc = _run_script("bench_threads.py", "--competitors", "1", "--rounds", "1", "--steps", "1",
                       "model.field.hidden=[8]", "data.n_train=64")
    assert "threads=1:" in proc.stdout and "auto chose 1 thread(s)" in proc.stdout  # a small field: one thread


# torchdyn 1.0.6's torchdyn.core.__all__: the bench scripts' torchdyn side runs only where torchdyn is installed
# (scripts/install_bench_deps.sh), never in CI, so what they import from it is checked here by name.
TORCHDYN_CORE = {"DEFunc", "NeuralODE", "NeuralDE", "NeuralSDE", "ODEProblem", "SDEProblem", "MultipleShootingProblem",
                 "MultipleShootingLayer"}


def test_the_bench_scripts_import_only_what_torchdyn_has():
    import ast

    imported = set()
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchdyn"):
                imported |= {(path.name, node.module, alias.name) for alias in node.names}
    assert imported and {name for *_, name in imported} <= TORCHDYN_CORE, imported
    assert {module for _, module, _ in imported} == {"torchdyn.core"}


def test_step_profile_puts_the_fields_autograd_nodes_on_the_fields_side():
    import torch
    from torch import nn

    step_profile = _bench_module("step_profile")
    torch.manual_seed(0)
    field = step_profile.Ranged(nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)))
    z0 = torch.randn(64, 2, requires_grad=True)

    def gradient(X, y):  # two Euler steps around the ranged field, then a loss
        z = z0 + 0.1 * field(z0)
        z = torch.add(z, field(z), alpha=0.1)
        ((z - y) ** 2).mean().backward()
        return None, 2, 0

    totals, outside = step_profile.profiled(gradient, None, torch.zeros(64, 2), 3)
    assert list(totals) == list(step_profile.CATEGORIES) and all(ms >= 0 for ms in totals.values())
    assert totals["field forward"] > 0 and totals["field backward"] > 0 and totals["solver backward"] > 0
    # the field's nodes (addmm, tanh and their backward) are never counted outside it; the Euler sums' are
    assert not {"aten::addmm", "aten::linear", "aten::tanh", "AddmmBackward0", "TanhBackward0"} & set(outside)
    assert {"aten::add", "aten::mul", "AddBackward0", "MulBackward0"} <= set(outside)
    assert sum(outside.values()) == pytest.approx(totals["solver forward"] + totals["solver backward"])

    class Adjoint(torch.autograd.Function):  # an adjoint's shape: the backward evaluates the field and its VJP
        @staticmethod
        def forward(ctx, z):
            ctx.save_for_backward(z)
            with torch.no_grad():
                return z + 0.1 * field(z)

        @staticmethod
        def backward(ctx, g):
            (z,) = ctx.saved_tensors
            with torch.enable_grad():
                z = z.detach().requires_grad_()
                (vjp,) = torch.autograd.grad(field(z), z, g)
            return g + 0.1 * vjp

    def adjoint_gradient(X, y):
        ((Adjoint.apply(z0) - y) ** 2).mean().backward()
        return None, 1, 1

    totals, outside = step_profile.profiled(adjoint_gradient, None, torch.zeros(64, 2), 3)
    assert totals["field forward"] > 0 and totals["field backward"] > 0  # nested in the adjoint's node
    assert "AdjointBackward" in outside and not {"aten::tanh", "TanhBackward0", "AddmmBackward0"} & set(outside)


@pytest.mark.slow
def test_step_profile_script_splits_a_gradient_of_the_default_model():
    proc = _run_script("step_profile.py", "--no-torchdyn", "--pretrain", "0", "--method", "dopri5", "--repeats", "2",
                       "--rounds", "1")
    (table,) = markdown_tables(proc.stdout)
    rows = {r["where"]: r for r in table}
    assert list(rows) == [*_bench_module("step_profile").CATEGORIES, "total"]
    shares = {where: float(r["nodex share"].rstrip("%")) for where, r in rows.items()}
    assert shares["total"] == 100 and sum(v for k, v in shares.items() if k != "total") == pytest.approx(100, abs=3)
    # batch 1024, 32 hidden units: the field's kernels are most of a gradient
    assert shares["field forward"] + shares["field backward"] > 50
    import re

    nfe = re.search(r"dopri5 tol 0.0001 autograd \| NFE fwd/bwd: nodex (\d+)/0 \| 2 gradients profiled", proc.stdout)
    assert nfe and int(nfe.group(1)) % 6 == 2  # the initial step's 2 evaluations, then 6 per attempted step
    assert "unprofiled CPU ms/gradient (median): nodex" in proc.stdout
