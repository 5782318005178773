"""The default experiment (vanilla NODE on the paper's annuli) actually learns."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_default_run_learns_the_annuli_with_a_leaky_boundary(cli, tmp_path):
    code, out, err = cli(["train", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    # Vanilla flows are homeomorphisms: the inner disk stays connected to the outside through
    # a thin "leak" channel, so the boundary is mostly, not perfectly, right (paper Fig., §E1).
    acc = result["metrics"]["test/accuracy"]
    assert 0.97 <= acc < 1.0, acc
    assert (tmp_path / "run" / "plots" / "decision_map.png").exists()
