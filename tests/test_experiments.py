"""Every named paper experiment composes and trains a few steps (tiny budget, real code path)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from fakes import write_fake_cifar10, write_fake_mnist
from nodex.cli import CONFIG_DIR
from nodex.train.run import run_train

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def test_there_are_paper_experiments():
    assert len(EXPERIMENTS) >= 5


def shrink(cfg, tmp_path: Path) -> None:
    """Tiny budget: 2 steps, small splits and batches, no figures; fake image files where data needs them."""
    with open_dict(cfg):
        t = cfg.trainer
        t.max_steps, t.epochs, t.log_every, t.val_every, t.checkpoint_every = 2, None, 1, 2, 2
        if t.get("batch_size"):
            t.batch_size = min(int(t.batch_size), 16)
        t.eval_batch_size = 64
        t.num_threads = 1
        t.plots = False  # each family's figures: tests/test_viz.py (one experiment per family)
        cfg.logger.tensorboard = False
        d = cfg.data
        for key, n in (("n_train", 48), ("n_val", 24), ("n_test", 24)):
            if isinstance(d.get(key), int) and d.get(key) > n:
                d[key] = n
        if d.name in ("mnist", "cifar10"):
            writer = write_fake_mnist if d.name == "mnist" else write_fake_cifar10
            writer(tmp_path / "data")
            d.root = str(tmp_path / "data")
        for key in ("n_train", "n_val", "n_test"):
            if d.name in ("digits", "mnist5k") and d.get(key) is None:
                d[key] = 40
        if d.name in ("mnist", "cifar10", "mnist5k", "digits"):
            # conv fields at random init take 100+ adaptive NFE: two rk4 steps keep the test to
            # seconds while still running the experiment's model, data, task and sensitivity.
            cfg.solver.method, cfg.solver.step_size = "rk4", 0.5


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.slow
def test_experiment_composes_and_trains_two_steps(compose_cfg, tmp_path, name):
    cfg = compose_cfg([f"experiment={name}"])
    comments = [ln for ln in (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text().splitlines() if ln.startswith("#")]
    described = [ln for ln in comments if "@package" not in ln and len(ln.strip("# ")) > 10]
    assert described, "an experiment file starts with a comment that describes it"
    shrink(cfg, tmp_path)
    OmegaConf.resolve(cfg)
    result = run_train(cfg, tmp_path / "run")
    assert result["status"] == "completed", result["error"]
    assert result["steps"] == 2 and result["params"] > 0
    assert all(v == v for v in result["metrics"].values())  # no NaN metrics


def test_each_headers_paper_numbers_match_the_paper_values_file():
    """The numbers an experiment's header quotes from the paper are the ones in nodex/paper/paper_values.yaml."""
    import yaml

    from nodex.paper.paper_values import VALUES_FILE, load_values

    direct = yaml.safe_load(VALUES_FILE.read_text())["values"]
    values = load_values()
    for name, metrics in direct.items():
        text = " ".join(ln.lstrip("# ") for ln in (Path(CONFIG_DIR) / "experiment" / f"{name}.yaml").read_text()
                        .splitlines() if ln.startswith("#"))
        for metric in metrics:
            shown = values[name][metric].text()
            token = {"nfe_forward": f"{shown} NFE", "params": f"{shown} params"}.get(metric, shown)
            assert token in text, f"{name}.yaml's header should quote the paper's {metric} as '{token}'"


# One experiment per kind of state the regularisers see: an input layer with parameters (the initial state requires
# grad), data control, a depth-variant (Galërkin) field, stacked layers with jumps, a learned per-sample horizon, conv
# fields on images, a CNF.
REGULARISED = ["spheres_augmentation_ilnode", "annuli_data_control", "galnode_spirals", "stacked_moons",
               "reflection_adaptive_depth", "digits_ilnode", "cnf_gaussians"]


@pytest.mark.parametrize("sensitivity", ["autograd", "adjoint"])
@pytest.mark.parametrize("name", REGULARISED)
@pytest.mark.slow
def test_experiment_trains_with_both_regularisers(compose_cfg, tmp_path, name, sensitivity):
    cfg = compose_cfg([f"experiment={name}", "task.regularizer.kinetic=0.01", "task.regularizer.jacobian=0.01",
                       f"solver.sensitivity={sensitivity}"])
    shrink(cfg, tmp_path)
    OmegaConf.resolve(cfg)
    result = run_train(cfg, tmp_path / "run")
    assert result["status"] == "completed", result["error"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    terms = [(r["train/reg_kinetic"], r["train/reg_jacobian"]) for r in rows if "train/loss" in r]
    # zero where the field starts constant (a zero last layer: f ≡ its bias), never negative
    assert len(terms) == 2 and all(k >= 0 and j >= 0 and math.isfinite(k + j) for k, j in terms), terms
    assert terms[-1][0] > 0, terms
