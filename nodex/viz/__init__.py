"""The paper's diagnostic figures, for any nodex model and its data, from Python or ``nodex plot``.

Pick the figures that fit a model and draw them (no run logger needed)::

    model, cfg = nodex.load("outputs/train/DATE/TIME")
    data = nodex.load_data(cfg)
    figs = nodex.viz.draw(model, data)                      # {name: matplotlib Figure}, all that fit
    figs = nodex.viz.draw(model, data, ["decision_map"])    # only these (ValueError names those that fit)
    nodex.viz.save(figs, "my_plots", format="pdf", dpi=200)  # my_plots/decision_map.pdf, ...

Entry points (``data``: a ``DataBundle`` — its test split is drawn — or an ``(X, y)`` pair; ``task``: the run's
task, optional: the tracking target, and whether a classifier's outputs are logits or a regression readout):

- ``available(model, data, task=None, metrics=None) -> list[str]``: the names that fit, nothing drawn.
- ``figures(model, data, task=None, names=None, metrics=None)``: ``(name, Figure)`` one at a time.
- ``draw(model, data, names=None, task=None, metrics=None, limits=None) -> dict[str, Figure]`` (``limits``: the
  2-D figures' plotted range ``(x1 from, x1 to, x2 from, x2 to)``).
- ``save(figs, directory, format="png", dpi=100) -> list[Path]``: ``directory/<name>.<format>``, figures closed.

The figures (each also callable on its own; ``X`` ``(N, d)``, ``y`` class labels ``(N,)`` unless said):

- ``decision_map(model, X, y, n_classes, readout="auto")``: 2-D inputs. Two classes: P(class 1) for logits
  (``readout="probability"``), the raw output ŷ for a regression readout (``"value"``; ``"auto"``: by the number
  of outputs), with the decision boundary; the colourbar says which. More classes: the predicted class.
- ``trajectories(model, X, y)``: z_1(s), z_2(s) over depth, one colour per class.
- ``state_space(model, X, y, windows=None)``: 2-D states z(s) over the field, drawn at the depth each panel names
  (one panel for a depth-invariant field, depth windows for a depth-varying one).
- ``state_space_per_input(model, X, y, learned_horizon=False)``: per input, over its own field f(s, z, u(x)).
- ``vector_field_snapshots(model, X, y, depths=(0, .25, .5, .75, 1))``: z(s) and the field at fractions of S.
- ``parameter_evolution(model, S, per_layer=5)``: θ(s) of depth-variant (Galërkin, stacked) layers, the entries
  that vary most, named ``field.layers.0.weight[3, 1]``; ``None`` without such layers.
- ``horizon_figure(model, X, y=None)``: a learned horizon S(x) over the inputs, and its histogram.
- ``regression_trajectories(model, X, y)``: 1-D inputs ``(N, 1)``, targets ``(N, 1)``: z(s) coloured by error.
- ``tracking_figure(model, task, X)``: z(s) against the tracking target γ(s).
- ``cnf_figure(model, X, y, condition)``, ``cnf_samples(model, X, y)``: a CNF's density and samples.
- ``training_curves(read_metrics(path))``: NFE and accuracy against the step, from a run's ``metrics.jsonl``.

A model drawn here is a nodex ``GeneralNeuralODE`` (or ``CNF``): ``model(x).y_hat``, ``trajectory(x, s)``
``(T, B, *state)``, ``input_layer``, ``field(s, z, u)``, ``control``, ``span`` (its horizon); it says what it is
with ``figure_traits()`` (:mod:`nodex.viz.protocol`). ``import nodex`` does not import this package (nor
matplotlib); ``nodex.viz`` resolves on first use.
"""

from nodex.viz.classes import decision_map, trajectories
from nodex.viz.curves import read_metrics, training_curves
from nodex.viz.density import cnf_figure, cnf_samples
from nodex.viz.depth import parameter_evolution, tracking_figure
from nodex.viz.diagnostics import FigureData, available, diagnostics, draw, figures, save
from nodex.viz.flows import horizon_figure, regression_trajectories, vector_field_snapshots
from nodex.viz.protocol import Diagnosable, traits_of
from nodex.viz.state_space import state_space, state_space_per_input

# The figures' names, as files and as ``nodex plot figures=...`` (``cnf_condition_<k>``: one per prior).
FIGURE_NAMES = ("decision_map", "trajectories", "state_space", "vector_field", "parameters_evolution", "horizon",
                "regression_trajectories", "tracking", "cnf_condition_<k>", "cnf_samples", "training_curves")

__all__ = [
    "FIGURE_NAMES", "Diagnosable", "FigureData", "available", "cnf_figure", "cnf_samples", "decision_map",
    "diagnostics", "draw", "figures", "horizon_figure", "parameter_evolution", "read_metrics",
    "regression_trajectories", "save", "state_space", "state_space_per_input", "tracking_figure", "traits_of",
    "training_curves", "trajectories", "vector_field_snapshots",
]
