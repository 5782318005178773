"""nodex's own solvers on one engine: the adaptive pairs dopri5 and tsit5 on a shared Runge–Kutta
loop (forward and adjoint), the fixed grid (euler / midpoint / rk4, breakpoint-aware, forward and
adjoint) and tuple states flattened into one tensor. torchdiffeq stays the reference and the
fallback (:func:`nodex.ode.odesolve` chooses)."""
