"""nodex's own solvers on one engine: dopri5 (forward and adjoint), the fixed grid
(euler / midpoint / rk4) and tuple states flattened into one tensor. torchdiffeq stays the
reference and the fallback (:func:`nodex.ode.odesolve` chooses)."""
