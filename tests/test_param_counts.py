"""The paper's results-table models (§E5) have exactly the paper's parameter counts, and the
table-1 configs compose and train on (fake) files of the right format and shape."""

from __future__ import annotations

import json

import pytest

from fakes import write_fake_cifar10, write_fake_mnist
from nodex.models import DataSpec, build_model, count_parameters
from nodex.ode import SolverSettings

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "digits": (1, 8, 8), "mnist5k": (1, 28, 28)}

# CIFAR-10: the poster's 37.1K / 35.0K / 36.1K / 34.6K; MNIST: ≈21.4K / 20.4K / 20.7K / 20.0K.
TABLE1 = {
    "table1_cifar10_node": 37_091,
    "table1_cifar10_anode": 34_954,
    "table1_cifar10_ilnode": 36_088,
    "table1_cifar10_second_order": 34_618,
    "table1_mnist_node": 21_391,  # the paper's NODE layout is unpublished; this one is 21.4K (see model/node_conv)
    "table1_mnist_anode": 20_398,
    "table1_mnist_ilnode": 20_686,
    "table1_mnist_second_order": 20_014,
    "mnist5k_node": 21_391,
    "mnist5k_anode": 20_398,
    "mnist5k_ilnode": 20_686,
    "mnist5k_second_order": 20_014,
    "digits_node": 5_599,
    "digits_anode": 5_662,
    "digits_ilnode": 5_806,
    "digits_second_order": 5_598,
}


@pytest.mark.parametrize("experiment, expected", TABLE1.items())
def test_experiment_models_have_the_paper_parameter_counts(compose_cfg, experiment, expected):
    cfg = compose_cfg([f"experiment={experiment}"])
    model = build_model(cfg.model, DataSpec(SHAPES[cfg.data.name], 10), SolverSettings())
    assert count_parameters(model) == expected


def test_table1_settings_are_the_papers(compose_cfg):
    cfg = compose_cfg(["experiment=table1_cifar10_ilnode"])
    assert (cfg.solver.method, cfg.solver.rtol, cfg.solver.atol, cfg.solver.sensitivity) == ("dopri5", 1e-4, 1e-4, "adjoint")
    t = cfg.trainer
    assert (t.optim.name, t.optim.lr, t.optim.weight_decay) == ("adamw", 1e-3, 5e-4)
    assert (t.scheduler.name, t.scheduler.step_size, t.scheduler.gamma, t.scheduler.unit) == ("step", 5, 0.9, "epoch")
    assert (t.batch_size, t.epochs) == (64, 20)
    assert list(cfg.data.mean) == [0.4914, 0.4822, 0.4465] and list(cfg.data.std) == [0.2023, 0.1994, 0.2010]


@pytest.mark.parametrize(
    "preset, expected", [("node_conv", 21_391), ("anode", 20_398), ("ilnode", 20_686), ("second_order", 20_014)]
)
def test_image_presets_are_the_paper_mnist_models(compose_cfg, preset, expected):
    cfg = compose_cfg([f"model={preset}"])
    assert count_parameters(build_model(cfg.model, DataSpec((1, 28, 28), 10), SolverSettings())) == expected


@pytest.mark.slow
# All four model kinds and both file readers; tests/test_experiments.py runs every table-1 config
# for two fixed-step steps, this runs the paper's adaptive solver and adjoint.
@pytest.mark.parametrize("experiment", ["table1_mnist_node", "table1_mnist_anode", "table1_cifar10_ilnode", "table1_cifar10_second_order"])
def test_table1_configs_train_two_steps_on_fake_files(train_run, tmp_path, experiment):
    """One epoch of two batches (so the per-epoch StepLR steps too), on fake files written in
    torchvision's formats: exercises the readers, the paper's settings and the model shapes.
    Tolerances loosened to 1e-2 to keep the adjoint solves short on one CPU core."""
    root = tmp_path / "data"
    if "cifar10" in experiment:
        write_fake_cifar10(root, n_per_batch=4, n_test=4)
    else:
        write_fake_mnist(root, n_train=20, n_test=4, gz=True)
    run_dir, result, code, err = train_run(
        f"experiment={experiment}", f"data.root={root}", "data.n_train=4", "data.n_val=0", "data.n_test=2",
        "trainer.epochs=1", "trainer.batch_size=2", "solver.rtol=1e-2", "solver.atol=1e-2", "trainer.log_every=1", "trainer.val_every=0",
        "trainer.checkpoint_every=2", "trainer.device=cpu",
    )
    assert code == 0, err
    assert result["status"] == "completed" and result["steps"] == 2
    assert result["params"] == TABLE1[experiment]
    assert result["nfe_forward"] >= 8  # dopri5: at least one accepted step (6) plus the initial evaluations
    assert result["nfe_backward"] > 0  # adjoint sensitivity
    lr = [json.loads(line)["train/lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "train/lr" in line]
    assert lr[0] == pytest.approx(1e-3)
