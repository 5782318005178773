"""A sweep job into a dir that holds a run: refused (its resume does not fit) it leaves the run's ``.hydra/`` and
``result.json`` as they were, and the sweep counts it as refused; accepted (a resume that fits) it takes its own
snapshot in; asked to resume a completed run it does nothing and counts as completed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import FAST


def _digests(job: Path) -> dict[str, str]:
    files = sorted([*job.glob(".hydra/*"), job / "result.json"])
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.slow
def test_a_refused_sweep_job_keeps_the_runs_snapshot(tmp_path, cli, capsys):
    sweep = ["--multirun", *FAST, "trainer.plots=false", f"hydra.sweep.dir={tmp_path / 'sw'}", "hydra.sweep.subdir=job"]
    code, _, err = cli(["train", *sweep])
    assert code == 0, err
    job = tmp_path / "sw" / "job"
    before = _digests(job)
    code, out, err = cli(["train", *sweep, "trainer.resume=auto", "model=depthcat"])
    assert code == 1
    assert "nodex: job 0 refused: trainer.resume=" in out + err and "model.name: 'vanilla' -> 'depthcat'" in out + err
    assert _digests(job) == before and not (job / ".hydra.new").exists()

    code, out, err = cli(["train", *sweep, "trainer.resume=auto"])  # completed: nothing to do, the sweep passes
    assert code == 0, err
    assert "already completed its 20 steps" in out + err and "1/1 jobs completed" in out + err
    assert _digests(job) == before

    code, out, err = cli(["train", *sweep, "trainer.resume=auto", "trainer.max_steps=30"])  # continues: its snapshot
    assert code == 0, err
    assert "trainer.max_steps=30" in (job / ".hydra" / "overrides.yaml").read_text()
    assert not (job / ".hydra.new").exists() and not (job / ".hydra.old").exists()
