"""``nodex plot`` redraws a trained run's figures from its checkpoint (the ones that fit, or the ones named; png, pdf
or svg at a chosen dpi) without touching the run's training-time plots, and refuses a bad setting in one line; the
figures say what they show (the decision map's colourbar, θ(s)'s parameter names)."""

from __future__ import annotations

import re
import struct
from types import SimpleNamespace

import pytest
import torch

import nodex
from nodex.cli import main
from nodex.models import DataSpec
from nodex.viz.depth import depth_variant_layers

TINY = ["trainer.max_steps=5", "trainer.log_every=5", "trainer.val_every=5", "trainer.checkpoint_every=5",
        "data.n_train=64", "data.n_val=64", "data.n_test=128", "trainer.plots=true", "logger.tensorboard=false",
        "solver=rk4", "solver.step_size=0.5"]
CHEAP = ["solver=euler", "solver.step_size=0.5"]  # figures of an untrained model: the solver does not matter
VANILLA_FIGURES = ["decision_map", "trajectories", "state_space", "vector_field"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny vanilla run on rings (its training-time figures drawn), trained once for the module."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("plotx") / "run"
    assert main(["train", *TINY, f"hydra.run.dir={run_dir}"]) == 0
    return run_dir


def _plot(cli, tmp_path, *args: str) -> tuple[int, str, str]:
    return cli(["plot", *args, f"hydra.run.dir={tmp_path / 'job'}"])


def _snapshot(folder) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.glob("*.png"))}


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.slow
def test_plot_redraws_every_figure_that_fits_beside_the_untouched_training_plots(run, cli, tmp_path):
    before = _snapshot(run / "plots")
    assert sorted(before) == sorted(f"{name}.png" for name in VANILLA_FIGURES)
    code, out, err = _plot(cli, tmp_path, f"ckpt={run}")
    assert code == 0 and err == "", err
    out_dir = run / "plots" / "redrawn-last"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{name}.png" for name in VANILLA_FIGURES)
    lines = out.strip().splitlines()
    assert lines[:-1] == [str(out_dir / f"{name}.png") for name in VANILLA_FIGURES]  # each file written
    assert lines[-1] == f"nodex: 4 figure(s) of {run / 'checkpoints' / 'last.pt'} in {out_dir}"
    assert _snapshot(run / "plots") == before  # same bytes, same mtime
    code, _, err = _plot(cli, tmp_path, f"ckpt={run}", f"out={run / 'plots'}")  # into the training plots: refused
    assert code == 2 and err.strip().splitlines() == [
        f"nodex: error: out={run / 'plots'} holds the run's training-time figures (decision_map.png would be "
        f"replaced); choose another out=, or leave it out for {out_dir}"]
    assert _snapshot(run / "plots") == before


@pytest.mark.slow
def test_one_named_figure_as_pdf_or_svg_and_dpi_sets_the_png_size(run, cli, tmp_path):
    code, out, err = _plot(cli, tmp_path, f"ckpt={run}", "figures=decision_map", "format=pdf", "dpi=50",
                           f"out={tmp_path / 'pdf'}")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "pdf").iterdir()] == ["decision_map.pdf"]
    assert (tmp_path / "pdf" / "decision_map.pdf").read_bytes()[:4] == b"%PDF"
    assert out.splitlines()[0] == str(tmp_path / "pdf" / "decision_map.pdf")
    code, _, err = _plot(cli, tmp_path, f"ckpt={run}", "figures=state_space", "format=svg", f"out={tmp_path / 'svg'}")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "svg").iterdir()] == ["state_space.svg"]
    assert b"<svg" in (tmp_path / "svg" / "state_space.svg").read_bytes()[:500]
    code, _, err = _plot(cli, tmp_path, f"ckpt={run}", "figures=decision_map", "dpi=40", f"out={tmp_path / 'png'}")
    assert code == 0, err
    small = _png_size(tmp_path / "png" / "decision_map.png")
    trained = _png_size(run / "plots" / "decision_map.png")  # the same figure, drawn by the trainer at 100 dpi
    assert small[0] == pytest.approx(trained[0] * 0.4, abs=3) and small[1] == pytest.approx(trained[1] * 0.4, abs=3)


@pytest.mark.slow
@pytest.mark.parametrize("arg, code, message", [
    ("figures=decision_map,bogus", 2, "figures=bogus is not a figure of this run; the figures that fit: decision_map, trajectories, "
                         "state_space, vector_field"),
    ("format=gif", 2, "format='gif' is not a figure format; choose one of: png, pdf, svg"),
    ("dpi=1.5", 2, "dpi=1.5 must be a positive integer (dots per inch, at most 1200), e.g. dpi=150"),
    ("ckpt=MISSING", 1, "checkpoint 'MISSING' does not exist: pass a run directory or a checkpoints/*.pt file"),
    *[(arg, 2, f"{shown} must be [x1_from, x1_to, x2_from, x2_to], four finite numbers, each from below its to (e.g. "
               "limits=[-3,3,-3,3])") for arg, shown in (("limits=[1,0,2,3]", "limits=[1, 0, 2, 3]"),
                                                         ("limits=[-3,3]", "limits=[-3, 3]"),
                                                         ("limits=[0,1,0,inf]", "limits=[0, 1, 0, inf]"))],
])
def test_a_bad_setting_is_one_line_and_draws_nothing(run, cli, tmp_path, arg, code, message):
    missing = str(tmp_path / "no-such-run")
    args = [f"ckpt={run}", arg] if not arg.startswith("ckpt=") else [arg.replace("MISSING", missing)]
    got, out, err = _plot(cli, tmp_path, *args, f"out={tmp_path / 'figs'}")
    assert (got, err.splitlines()) == (code, [f"nodex: error: {message.replace('MISSING', missing)}"])
    assert out == "" and not (tmp_path / "figs").exists()


def test_plot_help_names_the_keys(cli):
    code, out, _ = cli(["plot", "--help"])
    assert code == 0 and out.startswith("usage: nodex plot ckpt=")
    assert all(key in out for key in ("which=", "figures=", "format=png|pdf|svg", "dpi=", "out="))


def _rings(n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)) * 1.5
    return X, (X.norm(dim=1) < 1.5).long()


@pytest.mark.slow
@pytest.mark.parametrize("overrides, outputs, task, label", [
    (["model=vanilla", *CHEAP], 2, SimpleNamespace(kind="cross_entropy"), "P(class 1) (softmax of the readout)"),
    (["experiment=annuli_vanilla", *CHEAP], 1, None, "readout ŷ (raw output; class 1 where ŷ > 0.5)"),
    (["model=vanilla", *CHEAP], 2, SimpleNamespace(kind="mse"),
     "readout ŷ₁ − ŷ₀ (raw outputs; class 1 where > 0)"),
])
def test_the_decision_map_colourbar_says_what_the_readout_is(overrides, outputs, task, label):
    model = nodex.build(nodex.compose(overrides), spec=DataSpec((2,), outputs))
    fig = nodex.viz.draw(model, _rings(), ["decision_map"], task=task)["decision_map"]
    ax, colourbar = fig.axes
    assert colourbar.get_ylabel() == label
    if outputs == 1:  # the raw output, not clipped to [0, 1]: the scale is centred on the 0.5 boundary
        low, high = colourbar.get_ylim()
        assert low + high == pytest.approx(1.0, abs=1e-6) and (low < 0 or high > 1)
    assert ax.get_legend() is None and [t.get_text() for t in fig.legends[0].get_texts()] == ["class 0", "class 1"]


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["galnode", "stacked"])
def test_theta_legends_name_the_parameters_they_draw(model_name):
    model = nodex.build(nodex.compose([f"model={model_name}"]), spec=DataSpec((2,), 2))
    with torch.no_grad():  # depth-varying coefficients, whatever the initialisation
        for p in model.field.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    fig = nodex.viz.parameter_evolution(model, 1.0)
    layers = dict(depth_variant_layers(model))
    assert len(fig.axes) == len(layers) >= 2
    for ax in fig.axes:
        legend = ax.get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert 1 <= len(texts) <= 5 and min(t.get_fontsize() for t in legend.get_texts()) >= 8
        assert legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1  # beside the panel, not on it
        for line, text in zip(ax.get_lines(), texts):
            name, kind, index = re.fullmatch(r"(field\.[\w.]+)\.(weight|bias)\[([\d, ]+)\]", text).groups()
            layer = layers[name]
            idx = [int(i) for i in index.split(", ")]
            n_weight = layer.out_features * layer.in_features
            j = idx[0] * layer.in_features + idx[1] if kind == "weight" else n_weight + idx[0]
            theta = layer.theta(torch.tensor(0.0, dtype=torch.float32)).detach()
            assert line.get_ydata()[0] == pytest.approx(float(theta[j]), abs=1e-6), text  # the entry it names


@pytest.mark.slow
def test_limits_set_the_plotted_range_of_every_2d_figure(run, cli, tmp_path):
    """The range the issue asked for beside format and dpi (``range=`` was refused, ``+range=`` silently ignored)."""
    model, cfg = nodex.load(run)
    figs = nodex.viz.draw(model, nodex.load_data(cfg), limits=(-5.0, 4.0, -3.0, 6.0))
    for name in ("decision_map", "state_space", "vector_field"):
        panels = [ax for ax in figs[name].axes if ax.get_label() != "<colorbar>"]
        assert panels and all((ax.get_xlim(), ax.get_ylim()) == ((-5.0, 4.0), (-3.0, 6.0)) for ax in panels), name
    own = nodex.viz.draw(model, nodex.load_data(cfg), ["decision_map"])["decision_map"].axes[0]
    assert own.get_xlim() != (-5.0, 4.0)  # without limits: the data's own range
    code, out, err = _plot(cli, tmp_path, f"ckpt={run}", "figures=decision_map", "limits=[-5,4,-3,6]",
                           f"out={tmp_path / 'figs'}")
    assert code == 0 and (tmp_path / "figs" / "decision_map.png").is_file(), err
