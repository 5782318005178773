"""The paper's diagnostic figures (decision maps, trajectories, θ(s), horizons, densities)."""

from nodex.viz.diagnostics import diagnostics

__all__ = ["diagnostics"]
