"""The configs ship inside the wheel, and the installed package runs from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_every_config_and_runs_from_another_directory(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(wheel_dir.glob("nodex-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"nodex/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert expected and expected <= names, sorted(expected - names)[:5]
    assert "nodex/configs/__init__.py" in names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "import nodex.cli, sys; print(nodex.cli.__file__); sys.exit(nodex.cli.main(sys.argv[1:]))",
         "train", "trainer.max_steps=2", "data.n_train=32", "data.n_val=32", "data.n_test=32", "trainer.plots=false"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.splitlines()[0].startswith(str(site))  # the wheel's copy, not the checkout
    results = list((elsewhere / "outputs" / "train").rglob("result.json"))
    assert len(results) == 1 and '"status": "completed"' in results[0].read_text()
