"""ODE solving: torchdiffeq behind a small typed interface with NFE counting."""

from nodex.ode.solve import NFECounter, SolverSettings, available_methods, odesolve

__all__ = ["NFECounter", "SolverSettings", "available_methods", "odesolve"]
