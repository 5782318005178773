"""nodex: the experiments of "Dissecting Neural ODEs" (Massaroli et al., NeurIPS 2020) from configs.

The public Python surface (everything else is internal and may change):

- ``compose(overrides)`` -> the config ``nodex train`` would run; ``build(cfg)`` -> its model;
  ``load(run_dir_or_checkpoint)`` -> ``(trained model, config)``.
- ``NeuralODE(field, solver=, sensitivity=, ...)``: a Neural ODE of your own field, torchdyn-style:
  ``dz/ds = f(z)`` or ``f(s, z)``, ``node(x)`` -> ``z(S)``, ``node.trajectory(x, s_span)``, ``node.nfe``.
- ``GeneralNeuralODE`` (the paper's composite: input layer, field ``f(s, z, u)``, readout), ``CNF``,
  ``ModelOutput``, ``odesolve``, ``SolverSettings``, ``NFECounter``: the core.
- The slot layers, usable in your own ``nn.Module``: ``MLPField``, ``HigherOrderField``, ``DepthConcatLinear``,
  ``GalLinear``, ``GalConv2d`` (with ``GalerkinSpec``), ``StackedLinear``, ``StackedConv2d``, ``DataControl``,
  ``LearnedHorizon``, ``ZeroAugment``, ``PartialAugment``, ``TrackingLoss``, ``NormLoss``.
- ``viz``: the paper's figures for any model and data (``nodex.viz.draw(model, data)``; see :mod:`nodex.viz`).

Names resolve on first use, so ``import nodex`` (and the CLI's ``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "compose": "nodex.config",
    "build": "nodex.api",
    "load": "nodex.api",
    "load_data": "nodex.api",
    "NeuralODE": "nodex.node",
    "GeneralNeuralODE": "nodex.models.neural_ode",
    "ModelOutput": "nodex.models.neural_ode",
    "CNF": "nodex.models.cnf",
    "odesolve": "nodex.ode",
    "SolverSettings": "nodex.ode",
    "NFECounter": "nodex.ode",
    "MLPField": "nodex.models.fields",
    "HigherOrderField": "nodex.models.fields",
    "DepthConcatLinear": "nodex.models.layers",
    "GalLinear": "nodex.models.galerkin",
    "GalConv2d": "nodex.models.galerkin",
    "GalerkinSpec": "nodex.models.galerkin",
    "StackedLinear": "nodex.models.stacked",
    "StackedConv2d": "nodex.models.stacked",
    "DataControl": "nodex.models.control",
    "LearnedHorizon": "nodex.models.horizon",
    "ZeroAugment": "nodex.models.inputs",
    "PartialAugment": "nodex.models.inputs",
    "TrackingLoss": "nodex.models.integral",
    "NormLoss": "nodex.models.integral",
}

_SUBPACKAGES = ("viz",)  # imported on first use: ``import nodex`` imports no matplotlib

__all__ = ["__version__", *_EXPORTS, *_SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"nodex.{name}")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nodex' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
