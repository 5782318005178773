"""Continuous normalizing flows (FFJORD-style) and the data-controlled CNF (paper §1.12, E7).

The data ``x`` flows forward from ``s = 0`` to the latent ``z(S)``; the instantaneous change
of variables carries the log-density along:

    dz/ds = f(s, z, u),     dΔ/ds = −tr(∂f/∂z),     Δ(0) = 0
    log p(x) = log q_k(z(S)) − Δ(S)

``tr(∂f/∂z)`` is exact (``trace: exact``: one vector-Jacobian product per dimension; for small
dims) or Hutchinson's unbiased estimate ``εᵀ(∂f/∂z)ε`` (``trace: hutchinson``; ε Rademacher
or Gaussian, drawn once per solve as in FFJORD). Evaluation uses ``eval_trace`` (default
exact, so test NLLs are not noisy). Sampling draws ``z(S) ~ q_k`` and integrates backward to
``s = 0``. ``forward`` returns a :class:`~nodex.models.ModelOutput` with ``y_hat = log p(x)``
``(B, 1)`` and ``z_S`` the latent, so the generic loop trains it under ``task=density``.

**Conditional (data-controlled) CNF.** With ``conditions: K > 0`` the last input column holds
a condition index ``k ∈ [0, K)``, sample ``i`` is scored under its own prior ``q_{k_i}``
(``prior.means[k]``, ``prior.stds[k]``), and the field is controlled by ``u = one_hot(k)``
(``control.kind: condition``). One model then samples N different targets by warping N known
priors. The paper writes the control as the latent ``z_S`` itself; that signal is unknown
while computing a likelihood (it is the solve's output), and the reference code passes the
ODE's *initial condition* instead (the data when training, the latent when sampling): a
field that depends on the data point also breaks the change of variables (``∂f/∂x`` is
missing from the trace). We therefore condition on the prior's index, which is known in both
directions; ``control.kind: data`` is refused for a CNF.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nodex.errors import ConfigError
from nodex.models.build import MODELS, DataSpec, build_field, horizon_length
from nodex.models.control import ConditionControl
from nodex.models.neural_ode import ModelOutput
from nodex.models.regularizers import Regularizer, SteerDepth, differentiable_state, state_vjp, steer_from_config
from nodex.ode import NFECounter, SolverSettings, odesolve

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")


def exact_trace(dz: torch.Tensor, z: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``tr(∂dz/∂z)`` per sample by one VJP per dimension. ``dz``, ``z``: ``(B, d)`` -> ``(B,)``.
    Valid for fields that act on each sample independently (no batch coupling)."""
    flat = dz.reshape(dz.shape[0], -1)
    tr = torch.zeros(dz.shape[0], dtype=dz.dtype, device=dz.device)
    for i in range(flat.shape[1]):
        g = state_vjp(flat[:, i].sum(), z, torch.ones((), dtype=dz.dtype, device=dz.device), create_graph)
        tr = tr + g.reshape(g.shape[0], -1)[:, i]
    return tr


def hutchinson_trace(dz: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Hutchinson's estimate ``εᵀ(∂dz/∂z)ε`` per sample: ``(B, ...)`` -> ``(B,)``."""
    return hutchinson_terms(dz, z, eps, create_graph)[0]


def hutchinson_terms(
    dz: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``εᵀ(∂dz/∂z)ε`` ``(B,)`` and the VJP ``εᵀ ∂dz/∂z`` ``(B, ...)`` it came from (the Jacobian regulariser's)."""
    g = state_vjp(dz, z, eps, create_graph)
    return (g * eps).reshape(g.shape[0], -1).sum(1), g


class GaussianPriors(nn.Module):
    """Isotropic Gaussian priors ``q_k = N(means[k], stds[k]² I)``, one per condition.

    Shapes: ``means`` ``(K, d)``, ``stds`` ``(K,)``.
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)

    def log_prob(self, z: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``z`` ``(B, d)``, ``k`` ``(B,)`` long -> ``(B,)``."""
        mu, sd = self.means[k], self.stds[k][:, None]
        d = z.shape[1]
        return -0.5 * (((z - mu) / sd) ** 2).sum(1) - d * torch.log(sd[:, 0]) - 0.5 * d * math.log(2 * math.pi)

    def sample(self, n: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        eps = torch.randn(n, self.means.shape[1], generator=generator).to(self.means)
        return self.means[k] + self.stds[k] * eps


class CNFDynamics(nn.Module):
    """``(z, Δ[, r]) -> (f(s, z, u), −tr ∂f/∂z[, regulariser integrands (B, n_terms)])``: the field bound to
    one batch's control and noise. The Jacobian regulariser reuses the Hutchinson trace's noise and VJP.

    Works under autograd, the adjoint (which calls it with grad enabled and differentiates the
    trace, so the inner VJPs build a graph whenever grad mode is on) and ``no_grad``.
    """

    def __init__(
        self, field: nn.Module, control: torch.Tensor | None, trace: str, eps: torch.Tensor | None,
        regularizer: Regularizer | None = None,
    ) -> None:
        super().__init__()
        self.field = field
        self.control = control
        self.trace = trace
        self.eps = eps
        self.regularizer = regularizer

    def forward(self, s: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        z = state[0]
        graph = torch.is_grad_enabled()
        vjp = None
        with torch.enable_grad():
            z = differentiable_state(z, graph)
            dz = self.field(s, z, self.control)
            if self.trace == "exact":
                tr = exact_trace(dz, z, create_graph=graph)
            else:
                tr, vjp = hutchinson_terms(dz, z, self.eps, create_graph=graph)
            out = [dz, -tr]
            if self.regularizer is not None:
                out.append(self.regularizer.rates(dz, z, self.eps, create_graph=graph, vjp=vjp))
        if not graph:
            out = [t.detach() for t in out]
        return tuple(out)


class FieldOnly(nn.Module):
    """``z -> f(s, z, u)`` for sampling and trajectories (no trace)."""

    def __init__(self, field: nn.Module, control: torch.Tensor | None) -> None:
        super().__init__()
        self.field = field
        self.control = control

    def forward(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.field(s, z, self.control)


class CNF(nn.Module):
    """Continuous normalizing flow on flat data ``(B, d)`` (plus a condition column when
    ``n_conditions > 0``).

    Args:
        field: ``f(s, z, u)``: ``(B, d) -> (B, d)``.
        priors: one Gaussian prior per condition (one for an unconditional flow).
        settings: solver settings (method, tolerances, sensitivity).
        dim: data dimension ``d``.
        n_conditions: ``K`` (0: unconditional; the input is then ``(B, d)``).
        control: ``u(x, z0)`` (e.g. the one-hot condition), or ``None``.
        trace, eval_trace: ``exact`` | ``hutchinson`` in training / in eval mode.
        noise: Hutchinson noise, ``rademacher`` | ``gaussian``.
        S: the horizon: the flow runs over ``[0, S]``.
        regularizer: RNODE terms added to the training loss (training mode only), or ``None``.
        steer: STEER's end-depth sampler (training mode only), or ``None``.
    """

    def __init__(
        self,
        field: nn.Module,
        priors: GaussianPriors,
        settings: SolverSettings,
        *,
        dim: int,
        n_conditions: int = 0,
        control: nn.Module | None = None,
        trace: str = "exact",
        eval_trace: str = "exact",
        noise: str = "rademacher",
        S: float = 1.0,
        regularizer: Regularizer | None = None,
        steer: SteerDepth | None = None,
    ) -> None:
        super().__init__()
        self.field = field
        self.regularizer = regularizer
        self.steer = steer
        self.priors = priors
        self.settings = settings
        self.dim = dim
        self.n_conditions = n_conditions
        self.control = control
        self.trace, self.eval_trace, self.noise = trace, eval_trace, noise
        self.nfe = NFECounter()
        self.S = float(S)
        self.register_buffer("span", torch.tensor([0.0, self.S]), persistent=False)

    def figure_traits(self) -> frozenset[str]:
        """A density model, for :mod:`nodex.viz` (``nodex.viz.protocol.TRAITS``)."""
        return frozenset({"density"})

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` -> (data ``(B, d)``, condition index ``(B,)`` long)."""
        if self.n_conditions:
            return x[:, : self.dim], x[:, self.dim].round().long().clamp(0, self.n_conditions - 1)
        return x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    def _control(self, x: torch.Tensor, z0: torch.Tensor) -> torch.Tensor | None:
        return None if self.control is None else self.control(x, z0)

    def _noise(self, z: torch.Tensor) -> torch.Tensor:
        if self.noise == "gaussian":
            return torch.randn_like(z)
        return torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """``x``: ``(B, d [+1])`` -> ``ModelOutput(y_hat = log p(x) (B, 1), z_S (B, d))``."""
        z0, k = self.split(x)
        u = self._control(x, z0)
        trace = self.trace if self.training else self.eval_trace
        reg = self.regularizer if self.training else None
        needs_noise = trace == "hutchinson" or (reg is not None and reg.needs_noise)
        eps = self._noise(z0) if needs_noise else None  # one draw per solve, shared by trace and regulariser
        dyn = CNFDynamics(self.field, u, trace, eps, reg)
        params = (*dyn.parameters(), *([u] if u is not None and u.requires_grad else []))
        state = [z0, torch.zeros(z0.shape[0], dtype=z0.dtype, device=z0.device)]
        if reg is not None:
            state.append(torch.zeros(z0.shape[0], len(reg.names), dtype=z0.dtype, device=z0.device))
        span = self.span.to(z0.dtype)
        if self.steer is not None and self.training:
            span = torch.tensor([0.0, self.steer.draw()], dtype=z0.dtype, device=z0.device)
        finals = [c[-1] for c in odesolve(dyn, tuple(state), span, self.settings, counter=self.nfe,
                                          adjoint_params=params, quadratures=0 if reg is None else reg.quadratures)]
        z_S, delta = finals[0], finals[1]
        logp = self.priors.log_prob(z_S, k) - delta
        penalty, values = reg.summarise(finals[2]) if reg is not None else (None, {})
        return ModelOutput(logp[:, None], z_S, None, {}, penalty, values)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` ``(B,)`` (exact trace in eval mode)."""
        return self.forward(x).y_hat[:, 0]

    @torch.no_grad()
    def sample(self, n: int, condition: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples ``(n, d)`` of condition ``condition``: ``z(S) ~ q_k`` integrated back to 0."""
        z_S = self.priors.sample(n, condition, generator)
        x = self.with_condition(z_S, condition)
        dyn = FieldOnly(self.field, self._control(x, z_S))
        return odesolve(dyn, z_S, self.span.flip(0).to(z_S.dtype), self.settings)[-1]

    def with_condition(self, z: torch.Tensor, condition: int) -> torch.Tensor:
        """Append the condition column (a no-op for an unconditional flow)."""
        if not self.n_conditions:
            return z
        return torch.cat([z, torch.full((z.shape[0], 1), float(condition), dtype=z.dtype, device=z.device)], 1)

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Data-to-latent states at depths ``s`` ``(T,)``: ``(T, B, d)``."""
        z0, _ = self.split(x)
        dyn = FieldOnly(self.field, self._control(x, z0))
        return odesolve(dyn, z0, s.to(z0), self.settings)


def _priors(cfg: DictConfig | None, dim: int, n_priors: int) -> GaussianPriors:
    """``model.prior``: ``means`` (one ``d``-vector per condition, or one shared; default 0)
    and ``stds`` (one per condition, or one shared; default 1)."""
    cfg = OmegaConf.create({}) if cfg is None else cfg
    if cfg.get("kind", "gaussian") != "gaussian":
        raise ConfigError(f"model.prior.kind={cfg.kind!r} is unknown; choose one of: gaussian")
    rows = [[0.0] * dim] if cfg.get("means") is None else OmegaConf.to_container(cfg.means)
    if not (isinstance(rows, list) and rows and all(isinstance(r, list) and len(r) == dim for r in rows)):
        raise ConfigError(
            f"model.prior.means={rows} must be a list of {dim}-D points (one per condition, or one shared)"
        )
    stds = [1.0] if cfg.get("stds") is None else [float(v) for v in cfg.stds]
    if len(rows) == 1:
        rows = rows * n_priors
    if len(stds) == 1:
        stds = stds * n_priors
    if len(rows) != n_priors or len(stds) != n_priors:
        raise ConfigError(
            f"model.prior has {len(rows)} means and {len(stds)} stds but the model has {n_priors} condition(s): give "
            f"one (shared) or {n_priors}"
        )
    if min(stds) <= 0:
        raise ConfigError(f"model.prior.stds={stds} must be positive")
    return GaussianPriors(torch.tensor(rows, dtype=torch.float32), torch.tensor(stds, dtype=torch.float32))


def _choice(cfg: DictConfig, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = cfg.get(key, default)
    if value not in allowed:
        raise ConfigError(f"model.{key}={value!r} is unknown; choose one of: {', '.join(allowed)}")
    return value


@MODELS.register("cnf")
def build_cnf(
    cfg: DictConfig, spec: DataSpec, settings: SolverSettings, regularizer: Regularizer | None = None
) -> CNF:
    """CNF from ``cfg`` (the ``model`` group): ``field``, ``prior``, ``conditions``,
    ``control``, ``trace``, ``eval_trace``, ``noise``."""
    if spec.n_outputs != 1:
        raise ConfigError(
            f"model.kind=cnf outputs one log-likelihood per sample but the task wants {spec.n_outputs} outputs: use "
            "task=density"
        )
    if len(spec.input_shape) != 1:
        raise ConfigError(f"model.kind=cnf needs flat inputs (B, d), got input shape {tuple(spec.input_shape)}")
    n_cond = cfg.get("conditions", 0) or 0
    if not isinstance(n_cond, int) or n_cond < 0:
        raise ConfigError(f"model.conditions={n_cond!r} must be 0 (unconditional) or the number of conditions")
    dim = spec.input_shape[0] - (1 if n_cond else 0)
    if dim < 1:
        raise ConfigError(
            f"model.conditions={n_cond} expects inputs (B, d + 1) with the condition last, got width "
            f"{spec.input_shape[0]}"
        )
    control, control_shape = None, None
    node = cfg.get("control")
    if node is not None and node.get("kind", "none") != "none":
        if node.kind != "condition":
            raise ConfigError(
                f"model.control.kind={node.kind!r} cannot steer a CNF (a field that depends on the data point breaks "
                "the change of variables): use control.kind=condition or none"
            )
        if not n_cond:
            raise ConfigError(
                "model.control.kind=condition needs model.conditions > 0 and a dataset with a condition column"
            )
        if node.get("n") is not None and node.n != n_cond:
            raise ConfigError(f"model.control.n={node.n} differs from model.conditions={n_cond}")
        control, control_shape = ConditionControl(n_cond), (n_cond,)
    S = horizon_length(cfg)
    field = build_field(cfg.field, (dim,), (dim,), control_shape, S)
    priors = _priors(cfg.get("prior"), dim, max(1, n_cond))
    return CNF(
        field, priors, settings, dim=dim, n_conditions=n_cond, control=control,
        trace=_choice(cfg, "trace", "exact", TRACES), eval_trace=_choice(cfg, "eval_trace", "exact", TRACES),
        noise=_choice(cfg, "noise", "rademacher", NOISES), S=S,
        regularizer=regularizer, steer=steer_from_config(cfg, S),
    )
