"""Choose the paper's figures for a model and its data; draw them, save them, or send them to a run logger.

The model declares what it is (:mod:`nodex.viz.protocol`: density model, data control, learned
horizon, depth-variant layers); the data say the rest (2-D inputs, class labels, images). The
figures, by name (``plots/<name>.png`` of a run directory, ``nodex plot`` redraws them):

- classification: ``decision_map`` (2-D inputs), ``trajectories`` (z_i(s) by class), and for a
  2-D state ``state_space`` (z(s) over the field; per input for data control and adaptive depth)
  and ``vector_field`` (fixed horizon);
- depth-variant layers: ``parameters_evolution`` (θ(s)); learned horizon: ``horizon`` (S(x));
- 1-D regression: ``regression_trajectories``; tracking task: ``tracking`` (with the target γ(s));
- density models: ``cnf_condition_<k>`` per prior and ``cnf_samples``;
- image inputs: ``training_curves`` (NFE and accuracy, from a run's ``metrics.jsonl``).

Nothing here needs a run logger: :func:`figures` and :func:`draw` take the model, the data and what
else a figure needs (the task, the training metrics) explicitly; :func:`diagnostics` is the
trainer's use of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from nodex.viz.protocol import CONTROLLED, DENSITY, DEPTH_VARIANT, LEARNED_HORIZON, horizon_of, traits_of

Series = Mapping[str, tuple[list[int], list[float]]]


@dataclass(frozen=True)
class FigureData:
    """What the figures read of a dataset: the test split ``X`` ``(N, *input_shape)``, ``y`` (labels ``(N,)`` or
    targets ``(N, k)``), and the number of classes or the regression target width."""

    X: torch.Tensor
    y: torch.Tensor
    n_classes: int | None
    target_dim: int | None


def as_figure_data(data: Any) -> FigureData:
    """A :class:`FigureData` from a ``DataBundle`` (its test split; ``nodex.load_data``) or an ``(X, y)`` pair
    (integer labels ``(N,)``: classification; real targets: regression)."""
    if isinstance(data, FigureData):
        return data
    if hasattr(data, "test"):
        X, y = data.test
        return FigureData(X, y, data.n_classes, getattr(data, "target_dim", None))
    X, y = data
    if not y.is_floating_point() and y.dim() == 1:
        return FigureData(X, y, int(y.max()) + 1 if len(y) else 0, None)
    return FigureData(X, y, None, int(y.reshape(len(y), -1).shape[1]))


def _readout(task: Any) -> str:
    """What a classifier's outputs are (:func:`nodex.viz.classes.binary_score`): logits under cross-entropy, raw
    values under an MSE readout, ``auto`` without a task."""
    loss = getattr(task, "kind", None)
    return {"cross_entropy": "probability", "mse": "value"}.get(loss, "auto")


def _state_shape(model, X: torch.Tensor) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(model.input_layer(X[:1]).shape[1:])


Plan = list[tuple[str, Callable[[], Any]]]


def _class_plan(model, d: FigureData, traits: frozenset[str], task: Any, limits: Any = None) -> Plan:
    """``(name, draw)`` for a classifier of flat inputs ``X`` ``(N, d)`` (``limits``: the 2-D planes' range)."""
    from nodex.viz.classes import decision_map, trajectories
    from nodex.viz.flows import vector_field_snapshots
    from nodex.viz.state_space import state_space, state_space_per_input

    X, y, learned = d.X, d.y, LEARNED_HORIZON in traits
    plan: Plan = []
    if X.shape[1] == 2:
        plan.append(("decision_map", lambda: decision_map(model, X, y, d.n_classes, readout=_readout(task),
                                                          limits=limits)))
    if not learned:
        plan.append(("trajectories", lambda: trajectories(model, X, y)))
    if _state_shape(model, X) != (2,):
        return plan
    if CONTROLLED in traits or learned:
        plan.append(("state_space", lambda: state_space_per_input(model, X, y, learned_horizon=learned,
                                                                            limits=limits)))
    else:
        plan.append(("state_space", lambda: state_space(model, X, y, limits=limits)))
    if not learned:
        plan.append(("vector_field", lambda: vector_field_snapshots(model, X, y, limits=limits)))
    return plan


def _flow_plan(model, d: FigureData, traits: frozenset[str], task: Any) -> Plan:
    """``(name, draw)`` for θ(s), S(x), 1-D regression and tracking."""
    from nodex.viz.depth import depth_variant_layers, parameter_evolution, tracking_figure
    from nodex.viz.flows import horizon_figure, regression_trajectories

    X, y, learned = d.X, d.y, LEARNED_HORIZON in traits
    plan: Plan = []
    if DEPTH_VARIANT in traits and depth_variant_layers(model):
        plan.append(("parameters_evolution", lambda: parameter_evolution(model, horizon_of(model))))
    if learned:
        plan.append(("horizon", lambda: horizon_figure(model, X, y if d.n_classes else None)))
    if X.dim() == 2 and X.shape[1] == 1 and d.target_dim == 1:
        plan.append(("regression_trajectories", lambda: regression_trajectories(model, X, y, learned_horizon=learned)))
    if getattr(task, "reference", None) is not None:  # the tracking task carries its target γ(s)
        plan.append(("tracking", lambda: tracking_figure(model, task, X)))
    return plan


def _density_plan(model, d: FigureData) -> Plan:
    from nodex.viz.density import cnf_figure, cnf_samples

    plan: Plan = [(f"cnf_condition_{k}", lambda k=k: cnf_figure(model, d.X, d.y, k))
                  for k in range(max(1, model.n_conditions))]
    if model.dim == 2:
        plan.append(("cnf_samples", lambda: cnf_samples(model, d.X, d.y)))
    return plan


def _series(metrics: Series | str | Path | None) -> Series:
    from nodex.viz.curves import read_metrics

    if metrics is None:
        return {}
    return read_metrics(Path(metrics)) if isinstance(metrics, (str, Path)) else metrics


def plan(model, data, task: Any = None, *, metrics: Series | str | Path | None = None, limits: Any = None) -> Plan:
    """Every figure that fits this model and data, as ``(name, draw)`` with ``draw()`` -> a Figure (nothing is
    drawn yet). ``task``: the run's task (the tracking target; whether a classifier's outputs are logits);
    ``metrics``: a ``metrics.jsonl`` path or its series (:func:`nodex.viz.curves.read_metrics`), for the training
    curves of image models; ``limits``: ``(from, to, from, to)`` of the 2-D figures' planes (decision map: the
    inputs'; state space, vector field: the states'), default each figure's own."""
    from nodex.viz.curves import NFE_KEYS, training_curves

    d, traits = as_figure_data(data), traits_of(model)
    if DENSITY in traits:
        return _density_plan(model, d)
    out = _class_plan(model, d, traits, task, limits) if d.X.dim() == 2 and d.n_classes else []
    out += _flow_plan(model, d, traits, task)
    series = _series(metrics) if d.X.dim() == 4 else {}
    if any(k in series for k in NFE_KEYS) or any(k.endswith("accuracy") for k in series):
        out.append(("training_curves", lambda: training_curves(series)))
    return out


def available(model, data, task: Any = None, *, metrics: Series | str | Path | None = None) -> list[str]:
    """The names of the figures that fit this model and data (see :func:`plan`), without drawing any."""
    return [name for name, _ in plan(model, data, task, metrics=metrics)]


def figures(model, data, task: Any = None, *, names: Iterable[str] | None = None,
            metrics: Series | str | Path | None = None, limits: Any = None) -> Iterator[tuple[str, Any]]:
    """``(name, Figure)`` for each figure that fits (``names``: only these, in the plan's order), drawn one at a
    time; the caller closes each (``plt.close(fig)``).

    Raises:
        ValueError: a name in ``names`` that does not fit this model and data (the message lists those that do).
    """
    chosen = plan(model, data, task, metrics=metrics, limits=limits)
    if names is not None:
        wanted = list(names)
        fit = [name for name, _ in chosen]
        unknown = [n for n in wanted if n not in fit]
        if unknown:
            raise ValueError(f"no figure {unknown[0]!r} for this model and data; the figures that fit: "
                             f"{', '.join(fit) or 'none'}")
        chosen = [(name, draw) for name, draw in chosen if name in wanted]
    for name, draw in chosen:
        yield name, draw()


def draw(model, data, names: Iterable[str] | None = None, *, task: Any = None,
         metrics: Series | str | Path | None = None, limits: Any = None) -> dict[str, Any]:
    """``{name: Figure}`` of the figures that fit (or of ``names``); see :func:`figures`."""
    return dict(figures(model, data, task, names=names, metrics=metrics, limits=limits))


def save(figs: Mapping[str, Any] | Iterable[tuple[str, Any]], directory: str | Path, *, format: str = "png",
         dpi: int = 100) -> list[Path]:
    """Write each ``(name, Figure)`` to ``directory/<name>.<format>`` (created; an existing file of that name is
    replaced, each file written whole or not at all) and close it; returns the paths in order."""
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in (figs.items() if isinstance(figs, Mapping) else figs):
        path = directory / f"{name}.{format}"
        tmp = path.with_name(path.name + ".tmp")
        try:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=format)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
            plt.close(fig)
        written.append(path)
    return written


def diagnostics(model, data, task, logger, step: int) -> None:
    """The trainer's figures: each that fits as ``plots/<name>`` via ``logger.figure`` (training curves from the
    run's ``metrics.jsonl``), and the learned horizon's histogram via ``logger.histogram``."""
    if LEARNED_HORIZON in traits_of(model):
        with torch.no_grad():
            logger.histogram("horizon/S", model.horizon(as_figure_data(data).X).cpu(), step)
    for name, fig in figures(model, data, task, metrics=Path(logger.run_dir) / "metrics.jsonl"):
        logger.figure(f"plots/{name}", fig, step)
