"""ODE solving: a lean dopri5 and torchdiffeq behind a small typed interface with NFE counting."""

from nodex.ode.solve import NFECounter, SolverSettings, available_methods, odesolve

__all__ = ["NFECounter", "SolverSettings", "available_methods", "odesolve"]
