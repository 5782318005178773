"""Regularised training for fewer function evaluations: RNODE's integral terms (Finlay et al., ICML 2020)
and STEER's random end depth (Ghosh et al., NeurIPS 2020).

The ``task.regularizer`` slot, built by :func:`nodex.models.build.build_regularizer` and handed to the
model (models never read config). For the field ``f = f(s, z, u)`` of a first-order system:

- ``kinetic``:  ``∫_0^S ‖f(s, z)‖² ds``                     (kinetic energy of the flow);
- ``jacobian``: ``∫_0^S ‖εᵀ ∂f/∂z‖² ds``, Hutchinson's estimate of ``∫ ‖∂f/∂z‖²_F ds``.

Both are costs of the path: over a learned per-sample horizon ``S(x)`` they are ``∫ r |ds|`` (a signed horizon
integrates backward where ``S(x) < 0``; the terms stay ≥ 0 there).

Each rides as an extra state channel of the solve (like the integral losses of the paper's §1.10), so
autograd and the adjoint both give its value and its full gradient. The channel takes part in the adaptive step
control (``error_control``, RNODE's setting), or, since the dynamics never read it, rides on the steps the state
chooses (``task.regularizer.error_control=false``: ``odesolve``'s ``quadratures``): a regularised training solve
then takes the plain solve's steps — on the default experiment ~20% less CPU per run, but the trained model keeps
more evaluations (BENCHMARKS.md). The noise ε is drawn once per solve
and held fixed within it (drawing it per evaluation makes the adaptive solver's error estimate noisy, the
failure of torchdiffeq issue #120); the term costs one vector-Jacobian product per evaluation. The
regularised loss is ``L + Σ_k λ_k · mean_batch(∫ r_k ds)`` with the weights ``λ_k`` of the config; the
terms are computed in training mode only (evaluation solves the plain ODE, so its NFE is the model's).

STEER (``model.horizon.steer=b``, :class:`SteerDepth`) integrates each training solve to ``T ~ U(S − b, S + b)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from nodex.errors import ConfigError

TERMS = ("kinetic", "jacobian")


def differentiable_state(z: torch.Tensor, graph: bool) -> torch.Tensor:
    """``z`` to differentiate a field's value with respect to, inside ``enable_grad``: ``z`` itself where the solve
    builds a graph through it (``graph`` and ``z`` requires grad), else a fresh leaf. Without a graph (a no-grad solve:
    the adjoint's forward, evaluation) a state that requires grad (one computed from parameters, e.g. an input layer's
    output) is a view made in no-grad mode, which autograd differentiates as its base, not as itself."""
    return z if graph and z.requires_grad else z.detach().requires_grad_(True)


def state_vjp(f: torch.Tensor, z: torch.Tensor, v: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``vᵀ ∂f/∂z`` shaped like ``z`` (one VJP, the graph kept); exactly zero for a field that does not read ``z``
    (a translation ``f(s)``, a constant), which autograd reports as an unused input."""
    if not f.requires_grad:  # no parameters and no z: nothing to differentiate
        return torch.zeros_like(z)
    (vjp,) = torch.autograd.grad(f, z, v, create_graph=create_graph, retain_graph=True, allow_unused=True)
    return torch.zeros_like(z) if vjp is None else vjp


def jacobian_norm_estimate(f: torch.Tensor, z: torch.Tensor, eps: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``‖εᵀ ∂f/∂z‖²`` per sample (one VJP): ``f``, ``z``, ``eps`` ``(B, ...)`` -> ``(B,)``.
    Its expectation over ε with ``E[εεᵀ] = I`` is ``‖∂f/∂z‖²_F`` (for fields without batch coupling)."""
    vjp = state_vjp(f, z, eps, create_graph)
    return vjp.reshape(vjp.shape[0], -1).pow(2).sum(1)


class Regularizer(nn.Module):
    """The weighted RNODE terms ``{name: λ}`` (λ > 0 only); no parameters.

    :meth:`rates` gives the integrands ``(B, n_terms)`` in the order of :attr:`names`; :meth:`summarise`
    turns the integrals ``(B, n_terms)`` into the logged values and the weighted penalty.
    """

    def __init__(self, weights: dict[str, float], error_control: bool = True) -> None:
        super().__init__()
        self.error_control = bool(error_control)  # False: the integrals ride on the state's steps
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"{unknown[0]} is not a regulariser; valid: {', '.join(TERMS)}")
        self.weights = {k: float(weights[k]) for k in TERMS if k in weights and float(weights[k]) > 0}
        self.names = tuple(self.weights)

    @property
    def needs_noise(self) -> bool:
        return "jacobian" in self.weights

    def noise(self, z0: torch.Tensor) -> torch.Tensor | None:
        """ε for one solve, shaped like the state ``z0`` (Gaussian), or ``None`` without a Jacobian term."""
        return torch.randn_like(z0) if self.needs_noise else None

    def evaluate(
        self, field: nn.Module, s: torch.Tensor, z: torch.Tensor, u: torch.Tensor | None, eps: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(s, z, u)`` ``(B, ...)`` and the integrands ``(B, n_terms)``.

        Works under autograd, the adjoint (which calls the dynamics with grad on and differentiates the
        integrands: the VJP keeps its graph) and ``no_grad`` (values detached).
        """
        if not self.needs_noise:  # the kinetic term needs no derivative of f
            f = field(s, z, u)
            return f, self.rates(f, z, None, create_graph=False)
        graph = torch.is_grad_enabled()
        with torch.enable_grad():
            z = differentiable_state(z, graph)
            f = field(s, z, u)
            rates = self.rates(f, z, eps, create_graph=graph)
        if not graph:
            f, rates = f.detach(), rates.detach()
        return f, rates

    def rates(
        self, f: torch.Tensor, z: torch.Tensor, eps: torch.Tensor | None, create_graph: bool,
        vjp: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The integrands ``(B, n_terms)`` at one depth; ``eps`` is needed for the Jacobian term, unless
        ``vjp = εᵀ ∂f/∂z`` ``(B, ...)`` is already at hand (a CNF's Hutchinson trace computes it)."""
        cols = []
        for name in self.names:
            if name == "kinetic":
                cols.append(f.reshape(f.shape[0], -1).pow(2).sum(1))
            elif vjp is not None:
                cols.append(vjp.reshape(vjp.shape[0], -1).pow(2).sum(1))
            else:
                cols.append(jacobian_norm_estimate(f, z, eps, create_graph))
        return torch.stack(cols, dim=1)

    def summarise(self, integrals: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``integrals`` ``(B, n_terms)`` -> (penalty ``Σ λ_k mean_b`` 0-d, ``{reg_<name>: mean_b}`` unweighted)."""
        means = integrals.mean(dim=0)
        values = {f"reg_{name}": means[i] for i, name in enumerate(self.names)}
        penalty = sum(self.weights[name] * means[i] for i, name in enumerate(self.names))
        return penalty, values

    @property
    def quadratures(self) -> int:
        """How many of a solve's last state parts (this channel) stay out of the error norm: 0 or 1."""
        return int(not self.error_control)

    def extra_repr(self) -> str:
        terms = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return terms if self.error_control else f"{terms}, error_control=False"


class SteerDepth(nn.Module):
    """STEER (Ghosh et al., NeurIPS 2020): the end depth of each training solve drawn from
    ``U(S − b, S + b)``; evaluation integrates to ``S``.

    The draws come from this module's own generator, seeded from the run's seed, whose state is part of
    the model's ``state_dict`` (extra state): a checkpoint restores the stream and a resumed run draws
    the same depths as an uninterrupted one.
    """

    def __init__(self, S: float, half_width: float, seed: int) -> None:
        super().__init__()
        if not 0 <= half_width < S:
            raise ValueError(f"steer={half_width:g} must lie in [0, S={S:g})")
        self.S, self.half_width = float(S), float(half_width)
        self.generator = torch.Generator().manual_seed(int(seed))

    def draw(self) -> float:
        """One end depth ``T ~ U(S − b, S + b)`` (a host float)."""
        u = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        return self.S + self.half_width * (2.0 * u - 1.0)

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"S={self.S:g}, half_width={self.half_width:g}"


STEER_SEED_OFFSET = 0x5EE7  # decorrelates the STEER stream from the run's global torch stream


def _weight(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number >= 0 (0: off)")
    if not math.isfinite(value):  # an infinite weight makes every solve diverge, reported as a solver failure
        raise ConfigError(f"{key}={value} must be a finite number >= 0 (0: off)")
    if value < 0:
        raise ConfigError(f"{key}={value:g} must be >= 0")
    return float(value)


def regularizer_from_config(cfg: Any, model_cfg: Any) -> Regularizer | None:
    """``task.regularizer`` (``{kinetic: λ_K, jacobian: λ_J, error_control: bool}``, 0 = off) -> :class:`Regularizer`
    or ``None``.

    Raises:
        ConfigError: an unknown term, a negative or non-numeric weight, a non-boolean ``error_control``, or a model
            without a first-order field.
    """
    if cfg is None:
        return None
    opts = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    error_control = opts.pop("error_control", True)
    if not isinstance(error_control, bool):
        raise ConfigError(f"task.regularizer.error_control={error_control!r} must be true or false")
    unknown = sorted(set(opts) - set(TERMS))
    if unknown:
        raise ConfigError(f"task.regularizer.{unknown[0]} is not a regulariser; valid: {', '.join(TERMS)}")
    weights = {k: _weight(f"task.regularizer.{k}", v) for k, v in opts.items() if v is not None}
    active = {k: v for k, v in weights.items() if v > 0}
    if not active:
        return None
    order = int(model_cfg.get("order", 1) or 1)
    if order > 1:
        key = f"task.regularizer.{next(iter(active))}={active[next(iter(active))]:g}"
        raise ConfigError(
            f"{key} needs a first-order field, but model.order={order} (the field gives only the last block's "
            "derivative): set the weight to 0 or use a first-order model"
        )
    return Regularizer(active, error_control)


def steer_from_config(model_cfg: Any, S: float) -> SteerDepth | None:
    """``model.horizon.steer`` (the half-width ``b``; 0 or absent: off) -> :class:`SteerDepth` or ``None``.

    Raises:
        ConfigError: ``b < 0``, ``b >= S``, a learned horizon or a tracking target over depth.
    """
    horizon = model_cfg.get("horizon")
    b = None if horizon is None else horizon.get("steer")
    if b is None or (not isinstance(b, bool) and isinstance(b, (int, float)) and b == 0):
        return None
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
        raise ConfigError(f"model.horizon.steer={b!r} must be a number >= 0 (STEER's half-width b; 0: off)")
    if horizon.get("kind", "fixed") != "fixed":
        raise ConfigError(
            f"model.horizon.steer={b:g} needs model.horizon.kind=fixed (a {horizon.kind} horizon sets its own depth)"
        )
    if b >= S:
        raise ConfigError(f"model.horizon.steer={b:g} must be below model.horizon.S={S:g} (end depths U(S-b, S+b))")
    integral = model_cfg.get("integral_loss")
    if integral is not None and integral.get("kind", "none") == "tracking":
        raise ConfigError(
            f"model.horizon.steer={b:g} cannot apply to a tracking target over depth (model.integral_loss.kind="
            "tracking): a random end depth changes what is tracked; set model.horizon.steer=0"
        )
    return SteerDepth(S, b, torch.initial_seed() + STEER_SEED_OFFSET)
