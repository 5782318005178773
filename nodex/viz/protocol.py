"""What a model declares so that :mod:`nodex.viz` can choose its figures without probing.

A model implements :class:`Diagnosable`: ``figure_traits()`` returns a set of the names in
:data:`TRAITS`. The data decide the rest (2-D inputs, class labels, images); the state shape is
computed from the model's input layer, never guessed.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

DENSITY = "density"  # a normalizing flow: forward gives log p(x); has sample(n, condition), priors per condition
CONTROLLED = "controlled"  # the field takes u(x): one vector field per input (data control)
LEARNED_HORIZON = "learned_horizon"  # the depth S(x) is learned per input (adaptive depth)
DEPTH_VARIANT = "depth_variant"  # some layer's parameters θ(s) vary with depth (Galërkin, stacked)
TRAITS = frozenset({DENSITY, CONTROLLED, LEARNED_HORIZON, DEPTH_VARIANT})


@runtime_checkable
class Diagnosable(Protocol):
    """A model that says which of :data:`TRAITS` it has."""

    def figure_traits(self) -> frozenset[str]: ...


def traits_of(model: object) -> frozenset[str]:
    """The model's declared traits (empty for a model that declares none)."""
    if not isinstance(model, Diagnosable):
        return frozenset()
    traits = frozenset(model.figure_traits())
    unknown = traits - TRAITS
    if unknown:
        raise ValueError(f"unknown figure traits {sorted(unknown)}; known: {sorted(TRAITS)}")
    return traits


def horizon_of(model: object) -> float:
    """The model's fixed integration horizon ``S`` (the end of its ``span`` buffer ``(2,)``)."""
    return float(model.span[-1])


def stratified(y: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
    """Indices ``(m,)`` (m ≤ max(n, K)) of a sample with about ``n / K`` points of each of the ``K``
    classes in the labels ``y`` ``(N,)`` (every class present), shuffled so that no class is drawn
    last; fixed ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    labels = y.detach().cpu().long()
    classes = labels.unique()
    per_class = max(1, n // max(1, len(classes)))
    picks = []
    for k in classes.tolist():
        members = (labels == k).nonzero().flatten()
        picks.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    idx = torch.cat(picks)
    return idx[torch.randperm(len(idx), generator=gen)].to(y.device)


def spread(n_total: int, n: int) -> torch.Tensor:
    """``min(n, n_total)`` indices ``(m,)`` evenly spread over ``range(n_total)`` (regression data)."""
    return torch.linspace(0, n_total - 1, min(n, n_total)).round().long().unique()
