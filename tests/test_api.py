"""The public Python API: every export resolves and is documented, ``import nodex`` stays light, the README's
example runs, and ``nodex.load`` gives back the model ``nodex eval`` scores."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST

import nodex
from nodex.train.loop import evaluate

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_export_resolves_and_has_a_docstring():
    for name in nodex.__all__:
        value = getattr(nodex, name)
        if name != "__version__":
            assert (value.__doc__ or "").strip(), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nodex.nope  # noqa: B018


def test_import_nodex_does_not_import_torch():
    code = "import sys, nodex, nodex.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_compose_and_build_give_the_preset_model():
    cfg = nodex.compose(["model=galnode", "data=rings"])
    model = nodex.build(cfg)
    out = model(torch.randn(5, 2))
    assert out.y_hat.shape == (5, 2) and model.nfe.count > 0
    again = nodex.build(cfg)  # seeded from cfg.seed: the same initialisation
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.slow
def test_load_scores_what_nodex_eval_scores(train_run, cli, tmp_path):
    run_dir, result, code, err = train_run()
    assert code == 0, err
    code, _, err = cli(["eval", f"ckpt={run_dir}", f"hydra.run.dir={tmp_path / 'ev'}"])
    assert code == 0, err
    expected = json.loads((tmp_path / "ev" / "eval.json").read_text())["metrics"]
    model, cfg = nodex.load(run_dir)
    assert not model.training and cfg.model.name == "vanilla"
    from nodex.data import build_data
    from nodex.train.tasks import build_task

    data = build_data(cfg.data, int(cfg.seed))
    metrics = evaluate(model, build_task(cfg.task, data), data.test)
    assert metrics["accuracy"] == pytest.approx(expected["test/accuracy"], abs=1e-12)
    assert metrics["loss"] == pytest.approx(expected["test/loss"], rel=1e-9)


@pytest.mark.slow
def test_load_refuses_a_checkpoint_that_does_not_fit(train_run):
    from nodex.errors import CheckpointError
    from nodex.train.checkpoint import load_checkpoint, save_checkpoint

    run_dir, *_ = train_run()
    path = run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    ckpt["model"] = {k: v[..., :1] for k, v in ckpt["model"].items()}
    save_checkpoint(ckpt, path)
    with pytest.raises(CheckpointError, match="does not fit the model its config builds"):
        nodex.load(run_dir)


@pytest.mark.slow
def test_the_readme_example_runs(cli, tmp_path, monkeypatch):
    example = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["train", *FAST, "trainer.max_steps=10", "hydra.run.dir=outputs/demo"])
    assert code == 0, err
    exec(compile(example, "README.md", "exec"), {})


def test_compose_prints_no_hydra_schema_warning():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nodex.compose(["model=galnode"])
    assert not [w for w in caught if "ConfigStore schema" in str(w.message)], [str(w.message) for w in caught]
