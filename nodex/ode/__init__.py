"""ODE solving: nodex's lean solvers (dopri5, tsit5, euler / midpoint / rk4) and torchdiffeq behind a
small typed interface with NFE counting."""

from nodex.ode.solve import NFECounter, SolverSettings, available_methods, odesolve

__all__ = ["NFECounter", "SolverSettings", "available_methods", "odesolve"]
