"""The diagnostic figures: class-stratified inputs (every class drawn), the figures each model
family writes (chosen from the model's declared traits), clean file names."""

from __future__ import annotations

import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from nodex.config import compose  # noqa: E402
from nodex.train.logs import RunLogger  # noqa: E402
from nodex.train.setup import Pipeline  # noqa: E402
from nodex.viz import diagnostics, traits_of  # noqa: E402
from nodex.viz.classes import decision_map, trajectories  # noqa: E402
from nodex.viz.curves import read_metrics, training_curves  # noqa: E402
from nodex.viz.protocol import stratified  # noqa: E402
from nodex.viz.style import class_colour  # noqa: E402

SMALL = ["data.n_train=16", "data.n_val=16", "data.n_test=120", "trainer.device=cpu"]


def _pipe(*overrides: str) -> Pipeline:
    return Pipeline(compose([*overrides, *SMALL]))


def _plots(tmp_path, pipe: Pipeline) -> list[str]:
    logger = RunLogger(tmp_path, tensorboard=False)
    diagnostics(pipe.model, pipe.data, pipe.task, logger, 0)
    logger.close()
    return sorted(p.name for p in (tmp_path / "plots").iterdir())


def test_stratified_sample_holds_every_class_of_sorted_labels():
    y = torch.cat([torch.zeros(900), torch.ones(90), torch.full((10,), 2.0)]).long()  # sorted, unbalanced
    idx = stratified(y, 60)
    assert sorted(y[idx].unique().tolist()) == [0, 1, 2]
    assert [int((y[idx] == k).sum()) for k in range(3)] == [20, 20, 10]  # class 2 has only 10
    assert torch.equal(idx, stratified(y, 60))  # fixed seed
    assert y[idx[:30]].unique().numel() == 3  # shuffled: no class drawn only at the end


def test_first_points_of_the_toy_test_split_are_one_class_so_slicing_would_hide_one():
    y = _pipe("experiment=annuli_vanilla").data.test[1]
    assert y[: len(y) // 2].unique().numel() == 1  # why the figures must not take X[:n]


@pytest.mark.slow
def test_decision_map_and_trajectories_draw_every_class():
    pipe = _pipe("experiment=annuli_vanilla")
    X, y = pipe.data.test
    fig = decision_map(pipe.model, X, y, 2, n_points=40)
    drawn = {c.get_label(): len(c.get_offsets()) for c in fig.axes[0].collections if c.get_label().startswith("class")}
    assert drawn == {"class 0": 20, "class 1": 20}
    assert fig.axes[1].get_ylabel() == "readout ŷ (raw output; class 1 where ŷ > 0.5)"  # the MSE scalar readout
    fig = trajectories(pipe.model, X, y, n_points=40)
    colours = [line.get_color() for line in fig.axes[0].get_lines()]
    assert colours.count(class_colour(0)) == 20 and colours.count(class_colour(1)) == 20
    assert fig.axes[0].get_legend() is None  # off the data: one legend for the figure, outside the panels
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["class 0", "class 1"]


@pytest.mark.parametrize(
    "overrides, traits, files",
    [
        (["experiment=annuli_vanilla"], set(), ["decision_map", "state_space", "trajectories", "vector_field"]),
        (["experiment=annuli_data_control"], {"controlled"},
         ["decision_map", "state_space", "trajectories", "vector_field"]),
        (["experiment=galnode_spirals"], {"depth_variant"},
         ["decision_map", "parameters_evolution", "state_space", "trajectories", "vector_field"]),
        (["experiment=stacked_moons"], {"depth_variant"},
         ["decision_map", "parameters_evolution", "state_space", "trajectories", "vector_field"]),
        (["experiment=reflection_adaptive_depth"], {"learned_horizon"}, ["horizon", "regression_trajectories"]),
        (["experiment=galerkin_tracking"], {"depth_variant"}, ["parameters_evolution", "tracking"]),
        (["experiment=cnf_conditional"], {"density"}, ["cnf_condition_0", "cnf_condition_1", "cnf_samples"]),
    ],
    ids=["vanilla", "data_control", "galnode", "stacked", "adaptive_depth", "tracking", "cnf"],
)
@pytest.mark.slow
def test_each_model_family_writes_its_figures(tmp_path, overrides, traits, files):
    pipe = _pipe(*overrides)
    assert traits_of(pipe.model) == traits
    assert _plots(tmp_path, pipe) == [f"{name}.png" for name in files]


@pytest.mark.slow
def test_adaptive_depth_classifier_draws_the_state_space_per_input(tmp_path):
    pipe = _pipe("model=adaptive_depth", "data=rings", "task=classification")
    assert traits_of(pipe.model) == {"learned_horizon"}
    assert _plots(tmp_path, pipe) == ["decision_map.png", "horizon.png", "state_space.png"]


@pytest.mark.slow
def test_image_model_plots_nfe_and_accuracy_curves_from_metrics_jsonl(tmp_path):
    pytest.importorskip("sklearn")
    pipe = _pipe("experiment=digits_node")
    rows = [{"step": 10, "train/nfe_forward": 26.0, "train/nfe_backward": 20.0, "train/accuracy": 0.5},
            {"step": 20, "train/nfe_forward": 32.0, "train/nfe_backward": 26.0, "val/accuracy": 0.7}]
    logger = RunLogger(tmp_path, tensorboard=False)
    for row in rows:
        logger.scalars(row.pop("step"), row)
    diagnostics(pipe.model, pipe.data, pipe.task, logger, 20)
    logger.close()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["training_curves.png"]
    series = read_metrics(tmp_path / "metrics.jsonl")
    assert series["train/nfe_forward"] == ([10, 20], [26.0, 32.0]) and series["val/accuracy"] == ([20], [0.7])
    fig = training_curves(series)
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["train/nfe_forward", "train/nfe_backward"]
    assert legend.get_bbox_to_anchor().y1 <= fig.axes[0].get_window_extent().y0  # below the panel, off the curves
    assert fig.axes[1].get_ylabel() == "accuracy"


def test_training_curves_need_nfe_or_accuracy(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
    assert training_curves(read_metrics(tmp_path / "metrics.jsonl")) is None
    assert read_metrics(tmp_path / "missing.jsonl") == {}


def test_unknown_declared_trait_is_an_error():
    class Odd(torch.nn.Module):
        def figure_traits(self) -> frozenset[str]:
            return frozenset({"sparkly"})

    with pytest.raises(ValueError, match="unknown figure traits"):
        traits_of(Odd())


def _quiver_at(ax):
    """The (U, V) arrows of a panel's field quiver."""
    from matplotlib.quiver import Quiver

    quiver = next(c for c in ax.collections if isinstance(c, Quiver))
    return torch.tensor(quiver.U), torch.tensor(quiver.V)


@pytest.mark.slow
@pytest.mark.parametrize("overrides, varies", [(["model=vanilla"], False), (["model=galnode"], True),
                                               (["model=stacked"], True)])
def test_state_space_draws_the_field_at_the_depth_each_panel_names(overrides, varies):
    from nodex.viz.state_space import state_space

    pipe = _pipe(*overrides, "data=rings", "solver=euler", "solver.step_size=0.25")
    with torch.no_grad():  # a field that moves, whatever the initialisation
        for p in pipe.model.field.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    X, y = pipe.data.test
    fig = state_space(pipe.model, X, y, n_points=20, n_depths=9)
    panels = [ax for ax in fig.axes if ax.get_title()]
    if not varies:
        assert len(panels) == 1 and panels[0].get_title().endswith("over the field f(z), the same at every depth")
        return
    titles = [ax.get_title().split("\n") for ax in panels]
    assert [t[1] for t in titles] == [f"over the field f({d:.3g}, z)" for d in (0.125, 0.375, 0.625, 0.875)]
    arrows = [_quiver_at(ax) for ax in panels]
    assert not torch.allclose(arrows[0][0], arrows[-1][0])  # each panel its own depth's field
    gx = torch.tensor(panels[0].collections[0].get_offsets())  # the lattice the arrows start from
    field = pipe.model.field(torch.tensor(0.875), gx.float(), None)
    assert torch.allclose(arrows[-1][0].float(), field[:, 0], atol=1e-5)


@pytest.mark.slow
def test_figure_legends_sit_outside_the_axes():
    from nodex.viz.flows import vector_field_snapshots

    pipe = _pipe("experiment=stacked_moons", "solver=euler", "solver.step_size=0.25")
    X, y = pipe.data.test
    fig = vector_field_snapshots(pipe.model, X, y, n_points=20)
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)
