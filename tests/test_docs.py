"""The docs say what the code does: the README's parameter counts are what ``nodex.build`` gives, the numbers it
repeats from REPRODUCTION.md are that page's, the config comments' counts hold, the scripts it names exist, and
the stacked preset's advice on fixed-step solvers is true."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nodex
from nodex.models import DataSpec, count_parameters

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@functools.lru_cache(maxsize=None)
def _params(overrides: tuple[str, ...], spec: DataSpec | None = None) -> int:
    """The parameter count of the model ``nodex train OVERRIDES`` builds (computed once per test session)."""
    return count_parameters(nodex.build(nodex.compose(list(overrides)), spec=spec))


def _section(text: str, title: str) -> str:
    """The body of the Markdown section ``## title`` (up to the next ``## ``)."""
    body = text.split(f"\n## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0]


def test_every_parameter_count_in_the_readme_is_what_build_gives():
    # "1,224 params with `model=vanilla`", "1,221 with `experiment=annuli_vanilla`"
    stated = re.findall(r"\b(\d[\d,]*) (?:params )?with `([^`]+)`", README)
    assert len(stated) >= 6, stated
    built = {text: _params(tuple(text.split())) for _, text in stated}
    assert [(text, n) for n, text in stated if built[text] != int(n.replace(",", ""))] == [], built
    assert "what `nodex train` runs" in README and _params(()) == _params(("model=vanilla",)) == 1224


def test_the_model_presets_parameter_counts_in_their_comments_hold():
    # "Sized as the paper's MNIST ANODE (§E5, 20,398 parameters on 1×28×28)": ten classes, as the paper's table
    checked = 0
    for path in sorted((ROOT / "configs" / "model").glob("*.yaml")):
        for n, c, h, w in re.findall(r"\b(\d[\d,]*) parameters on (\d)×(\d+)×(\d+)", path.read_text()):
            spec = DataSpec((int(c), int(h), int(w)), 10)
            assert _params((f"model={path.stem}",), spec) == int(n.replace(",", "")), path.name
            checked += 1
    assert checked == 4


def test_the_data_control_comment_counts_both_readouts():
    text = (ROOT / "configs" / "model" / "data_control.yaml").read_text()
    assert "= 229 parameters; 232 with the default two-class readout" in text
    assert _params(("experiment=annuli_data_control",)) == 229 and _params(("model=data_control",)) == 232


def _claim_rates(page: str) -> dict[str, tuple[str, dict[str, str]]]:
    """REPRODUCTION.md's summary table: claim -> (result, {check: "k/n"})."""
    rows = re.findall(r"^\| \[([\w.]+)\]\(#claim-[\w-]+\) \| (\w[^|]*?) \| (.*) \|$", page, flags=re.M)
    claims = {}
    for claim, result, cell in rows:
        checks = {} if cell == "not run" else dict(part.rsplit(": ", 1) for part in cell.split("; "))
        claims[claim] = (result, checks)
    return claims


def test_the_readme_repeats_reproduction_md_numbers():
    page = (ROOT / "REPRODUCTION.md").read_text()
    readme = " ".join(_section(README, "Reproducing the paper").split())  # one line: code spans may wrap
    wall = re.search(r"in ([\d.]+) min of wall time", page)[1]
    assert re.findall(r"in ([\d.]+) min of wall time", readme) == [wall]
    invocations = re.search(r"The (\d+) invocations that made the runs", page)[1]
    assert re.findall(r"over (\d+) invocations", readme) == [invocations]
    verdict = re.search(r"\*\*(\d+ checks pass, \d+ fail, \d+ not run(?:, \d+ carried from the earlier page "
                        r"\(not rerun\))?)\*\*", page)[1]
    assert verdict in readme
    claims = _claim_rates(page)
    item = (r" - ([\d.]+|E\d+) \((PASS|FAIL|carried, earlier checks: (?:PASS|FAIL))\) (.*?)"
            r"(?= - (?:[\d.]+|E\d+) \(|Each experiment's audit)")
    items = re.findall(item, readme)
    assert [c for c, _, _ in items] == ["3.6", "3.7", "3.8", "3.9", "E6", "3.5"]
    for claim, result, text in items:
        page_result, rates = claims[claim]
        assert result == page_result.replace("not rerun (earlier checks: ", "carried, earlier checks: ").rstrip(")") \
            if result.startswith("carried") else result == page_result, claim
        every = re.search(r"(\d+/\d+) on every check", text)
        quoted = re.findall(r"`([^`]+)` (\d+/\d+)", text)
        assert every or quoted, text
        if every:
            assert set(rates.values()) == {every[1]}, (claim, rates)
        assert all(rates[check] == rate for check, rate in quoted), (claim, quoted, rates)


@pytest.mark.parametrize("doc", ["README.md", "BENCHMARKS.md"])
def test_every_script_the_docs_name_exists(doc):
    named = set(re.findall(r"scripts/[\w/]+\.(?:py|sh)", (ROOT / doc).read_text()))
    assert named and sorted(p for p in named if not (ROOT / p).is_file()) == []


def test_fixed_step_solvers_need_no_perturb_option_on_a_stacked_model():
    """What configs/model/stacked.yaml and the README say: nodex's rk4 keeps order 4 across the breakpoints by
    itself; ``+solver.options.perturb=true`` hands the solve to torchdiffeq, whose grid ignores them."""
    base = ["model=stacked", "model.field.depth_options.pieces=7"]
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def solve(*overrides: str) -> torch.Tensor:
        model = nodex.build(nodex.compose([*base, *overrides]), spec=DataSpec((2,), 2)).double()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.field.parameters():  # the same strongly varying pieces in every model
                p.copy_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
            return model(x).y_hat

    exact = solve("solver.rtol=1e-10", "solver.atol=1e-10")
    errors = {}
    for extra in ([], ["+solver.options.perturb=true"]):
        for h in (0.05, 0.025):
            errors[bool(extra), h] = float((solve("solver=rk4", f"solver.step_size={h}", *extra) - exact).abs().max())
    # each of the 7 pieces gets 3 steps, then 6: order 4 divides the error by 16
    assert errors[False, 0.05] / errors[False, 0.025] > 12
    assert errors[True, 0.05] / errors[True, 0.025] < 8  # a step straddles each jump: far below order 4
    assert errors[True, 0.025] > 1000 * errors[False, 0.025]
    assert "set no solver.options (perturb=true" in (ROOT / "configs" / "model" / "stacked.yaml").read_text()


def _pytest_settings() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]


def test_the_readme_test_command_runs_every_test_under_a_timeout():
    settings = _pytest_settings()
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q\n" in README  # what .ci/run runs: no -m filter
    assert "-m" not in settings["addopts"].split() and settings["timeout"] == 300
    assert "pytest-timeout==" in (ROOT / "constraints.txt").read_text()


@pytest.mark.slow
def test_a_hanging_test_fails_alone_and_its_subprocess_is_killed(tmp_path):
    """The configured timeout method on a test stuck in a subprocess: that test fails with "Timeout", the child
    is killed, and the next test still runs."""
    child_pid = tmp_path / "child.pid"
    (tmp_path / "child.py").write_text(f"import os, time\nopen({str(child_pid)!r}, 'w').write(str(os.getpid()))\n"
                                       "time.sleep(60)\n")
    (tmp_path / "test_hang.py").write_text(
        "import subprocess, sys\n"
        "def test_hangs():\n"
        "    subprocess.run([sys.executable, 'child.py'], timeout=600)\n"
        "def test_after():\n"
        "    pass\n"
    )
    method = _pytest_settings()["timeout_method"]
    (tmp_path / "pytest.ini").write_text(f"[pytest]\ntimeout = 2\ntimeout_method = {method}\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hang.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "Timeout" in proc.stdout and "1 failed, 1 passed" in proc.stdout, proc.stdout[-2000:]
    with pytest.raises(ProcessLookupError):
        os.kill(int(child_pid.read_text()), 0)
