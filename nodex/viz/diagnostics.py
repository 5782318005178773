"""Choose the paper's figures for a model and send them to a run logger.

The model declares what it is (:mod:`nodex.viz.protocol`: density model, data control, learned
horizon, depth-variant layers); the data say the rest (2-D inputs, class labels, images). Files,
under ``plots/`` of the run directory:

- classification: ``decision_map`` (2-D inputs), ``trajectories`` (z_i(s) by class), and for a
  2-D state ``state_space`` (z(s) over the field; per input for data control and adaptive depth)
  and ``vector_field`` (fixed horizon);
- depth-variant layers: ``parameters_evolution`` (θ(s)); learned horizon: ``horizon`` (S(x));
- 1-D regression: ``regression_trajectories``; tracking task: ``tracking`` (with the target γ(s));
- density models: ``cnf_condition_<k>`` per prior and ``cnf_samples``;
- image inputs: ``training_curves`` (NFE and accuracy, read from the run's ``metrics.jsonl``).
"""

from __future__ import annotations

import torch

from nodex.viz.protocol import CONTROLLED, DENSITY, DEPTH_VARIANT, LEARNED_HORIZON, horizon_of, traits_of


def _state_shape(model, X: torch.Tensor) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(model.input_layer(X[:1]).shape[1:])


def _class_figures(model, X: torch.Tensor, y: torch.Tensor, n_classes: int, traits: frozenset[str]):
    """``(name, figure)`` for a classifier of flat inputs ``X`` ``(N, d)``."""
    from nodex.viz.classes import decision_map, trajectories
    from nodex.viz.flows import vector_field_snapshots
    from nodex.viz.state_space import state_space, state_space_per_input

    learned = LEARNED_HORIZON in traits
    if X.shape[1] == 2:
        yield "decision_map", decision_map(model, X, y, n_classes)
    if not learned:
        yield "trajectories", trajectories(model, X, y)
    if _state_shape(model, X) != (2,):
        return
    if CONTROLLED in traits or learned:
        yield "state_space", state_space_per_input(model, X, y, learned_horizon=learned)
    else:
        yield "state_space", state_space(model, X, y)
    if not learned:
        yield "vector_field", vector_field_snapshots(model, X, y)


def _flow_figures(model, data, task, traits: frozenset[str], logger, step: int):
    """``(name, figure)`` for θ(s), S(x), 1-D regression and tracking."""
    from nodex.viz.depth import parameter_evolution, tracking_figure
    from nodex.viz.flows import horizon_figure, regression_trajectories

    X, y = data.test
    if DEPTH_VARIANT in traits:
        fig = parameter_evolution(model, horizon_of(model))
        if fig is not None:
            yield "parameters_evolution", fig
    if LEARNED_HORIZON in traits:
        with torch.no_grad():
            logger.histogram("horizon/S", model.horizon(X).cpu(), step)
        yield "horizon", horizon_figure(model, X, y if data.n_classes else None)
    if X.dim() == 2 and X.shape[1] == 1 and data.target_dim == 1:
        yield "regression_trajectories", regression_trajectories(model, X, y, learned_horizon=LEARNED_HORIZON in traits)
    if getattr(task, "reference", None) is not None:  # the tracking task carries its target γ(s)
        yield "tracking", tracking_figure(model, task, X)


def _density_figures(model, data):
    from nodex.viz.density import cnf_figure, cnf_samples

    X, y = data.test
    for k in range(max(1, model.n_conditions)):
        yield f"cnf_condition_{k}", cnf_figure(model, X, y, k)
    if model.dim == 2:
        yield "cnf_samples", cnf_samples(model, X, y)


def figures(model, data, task, logger, step: int):
    """Every ``(name, figure)`` that fits this model and data (lazily built, one at a time)."""
    traits = traits_of(model)
    if DENSITY in traits:
        yield from _density_figures(model, data)
        return
    X, y = data.test
    if X.dim() == 2 and data.n_classes:
        yield from _class_figures(model, X, y, data.n_classes, traits)
    yield from _flow_figures(model, data, task, traits, logger, step)
    if X.dim() == 4:
        from nodex.viz.curves import read_metrics, training_curves

        fig = training_curves(read_metrics(logger.run_dir / "metrics.jsonl"))
        if fig is not None:
            yield "training_curves", fig


def diagnostics(model, data, task, logger, step: int) -> None:
    """Write the figures that fit (see the module docstring) as ``plots/<name>`` via ``logger.figure``."""
    for name, fig in figures(model, data, task, logger, step):
        logger.figure(f"plots/{name}", fig, step)
