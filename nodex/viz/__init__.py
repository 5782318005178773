"""The paper's diagnostic figures (decision maps, trajectories, state space, θ(s), horizons, densities),
chosen from what the model declares (:mod:`nodex.viz.protocol`)."""

from nodex.viz.diagnostics import diagnostics, figures
from nodex.viz.protocol import Diagnosable, traits_of

__all__ = ["Diagnosable", "diagnostics", "figures", "traits_of"]
