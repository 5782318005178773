"""The paper's reported numbers and claims, keyed by experiment name, with their sources.

Two tables:

- :data:`PAPER_VALUES`: ``{experiment: {metric: PaperValue}}``, the numbers the paper (or its
  official code) gives for a run of that experiment, in nodex's units and metric names
  (accuracy as a fraction, ``nfe_forward`` = mean forward NFE per training step, ``params``).
  ``nodex report`` prints them beside the measured values.
- :data:`CLAIMS`: the headline checklist of ``shared/paper.md`` §3 as pass/fail checks against a
  stated tolerance; ``nodex reproduce`` evaluates them into ``REPRODUCTION.md``.

Checks name *run labels*: an experiment name, or ``NAME@VARIANT`` for an experiment run with
extra overrides (:data:`VARIANTS`), e.g. the depth-invariant baseline of ``galerkin_tracking``.
A check whose runs do not exist (experiment not written yet, or not part of the budget) is
reported as "not run", never as a failure.

Sources (see ``shared/paper.md`` §0 for the evidence labels):

- ``POSTER``: the paper's results table as printed on the authors' NeurIPS poster (§E5) [V-poster].
- ``CODE``: the authors' official notebooks (torchdyn v0.2.2.1 / diffeqml-research) [V-code].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

POSTER = "paper's results table (NeurIPS poster; paper.md §E5)"
CODE_ANNULI = "official annuli notebook (paper.md §1.9, §E1)"
CODE_REFLECTION = "official reflection code (paper.md §1.9, §E2)"
CODE_SPHERES = "torchdyn tutorial 04 (paper.md §E6)"
ARITHMETIC = "paper's layout, counted (paper.md §E5 [I]; matches the poster's rounded value)"


@dataclass(frozen=True)
class PaperValue:
    """One number from the paper. ``value`` is in nodex's units; ``shown`` is how the paper
    prints it (e.g. ``73.4%``, ``36.1K``)."""

    value: float
    source: str
    shown: str = ""

    def text(self) -> str:
        return self.shown or f"{self.value:g}"


def _table(acc: float, nfe: float, params: float, params_shown: str,
           exact_params: int | None = None) -> dict[str, PaperValue]:
    values = {
        "test/accuracy": PaperValue(acc, POSTER, f"{acc * 100:.1f}%"),
        "nfe_forward": PaperValue(nfe, POSTER, f"{nfe:g}"),
        "params": PaperValue(float(exact_params or params), ARITHMETIC if exact_params else POSTER, params_shown),
    }
    return values


# The results table (poster) — architectures on the full datasets, 20 epochs on a GPU.
_TABLE = {
    "mnist": {
        "node": _table(0.968, 98, 21400, "21.4K"),
        "anode": _table(0.989, 71, 20400, "20.4K", 20398),
        "ilnode": _table(0.991, 44, 20700, "20.7K", 20686),
        "second_order": _table(0.992, 43, 20000, "20.0K", 20014),
    },
    "cifar10": {
        "node": _table(0.589, 93, 37100, "37.1K", 37091),
        "anode": _table(0.708, 169, 35000, "35.0K", 34954),
        "ilnode": _table(0.734, 65, 36100, "36.1K", 36088),
        "second_order": _table(0.728, 59, 34600, "34.6K", 34618),
    },
}

PAPER_VALUES: dict[str, dict[str, PaperValue]] = {}
for _data, _models in _TABLE.items():
    for _model, _values in _models.items():
        PAPER_VALUES[f"table1_{_data}_{_model}"] = _values
# The 5k-MNIST stand-ins use the paper's MNIST architectures: the parameter counts compare
# exactly; accuracy and NFE are the paper's full-MNIST numbers, shown for reference only.
for _model, _values in _TABLE["mnist"].items():
    PAPER_VALUES[f"mnist5k_{_model}"] = {
        "params": _values["params"],
        "test/accuracy": PaperValue(_values["test/accuracy"].value, POSTER + ", full MNIST",
                                    _values["test/accuracy"].shown + " (full MNIST)"),
        "nfe_forward": PaperValue(_values["nfe_forward"].value, POSTER + ", full MNIST",
                                  _values["nfe_forward"].shown + " (full MNIST)"),
    }
PAPER_VALUES.update({
    "annuli_data_control": {"params": PaperValue(229, CODE_ANNULI, "229")},
    "annuli_galnode": {"params": PaperValue(2807, CODE_ANNULI, "2,807")},
    "reflection_data_control": {"params": PaperValue(257, CODE_REFLECTION, "257")},
    "spheres_augmentation_second_order": {"params": PaperValue(657, CODE_SPHERES, "657")},
})


def paper_value(experiment: Optional[str], metric: str) -> Optional[PaperValue]:
    """The paper's value of ``metric`` for ``experiment``, or ``None``."""
    if not experiment:
        return None
    return PAPER_VALUES.get(experiment, {}).get(metric)


# Experiments run again with extra overrides for a claim: label -> (experiment, overrides).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "galerkin_tracking@depth_none": ("galerkin_tracking", ("model.field.depth=none",)),
    "galerkin_tracking@depth_concat": ("galerkin_tracking", ("model.field.depth=concat",)),
}


# ----------------------------------------------------------------------------------------------
# Claims


Stat = tuple[float, float, int]  # mean, std, number of completed runs
Lookup = Callable[[str, str], Optional[Stat]]


@dataclass(frozen=True)
class Check:
    """One pass/fail comparison.

    ``op``:
        ``approx``  |ours − target| ≤ tol            ``rel``  |ours − target| ≤ tol·|target|
        ``eq``      ours == target (to 1e-9)         ``finite`` ours is a finite number
        ``le``/``ge`` ours ≤ / ≥ target (a threshold)
        ``lt_run``/``gt_run`` ours < / > the same metric of run ``target`` (a run label)
        ``order``   ``runs`` is a ranking (tuples of labels, best first, by ``direction``):
                    every member of a higher tier beats every member of a lower tier by > −tol.
    """

    label: str
    metric: str
    op: str
    run: str = ""
    target: float | str | None = None
    tol: float = 0.0
    paper: str = ""
    runs: tuple[tuple[str, ...], ...] = ()
    direction: str = "max"  # for ``order``: "max" (higher is better) or "min"
    min_rate: Optional[float] = None  # the fraction of seeds that must hold; None: the claim's

    def labels(self) -> list[str]:
        """Every run label this check reads."""
        if self.op == "order":
            return [label for tier in self.runs for label in tier]
        out = [self.run]
        if self.op in ("lt_run", "gt_run"):
            out.append(str(self.target))
        return out

    def tolerance(self) -> str:
        """The pass criterion in words."""
        t = self.target
        return {
            "approx": f"within ±{self.tol:g} of {t:g}" if isinstance(t, (int, float)) else "",
            "rel": f"within ±{self.tol:.0%} of {t:g}" if isinstance(t, (int, float)) else "",
            "eq": f"exactly {t:g}" if isinstance(t, (int, float)) else "",
            "le": f"≤ {t:g}" if isinstance(t, (int, float)) else "",
            "ge": f"≥ {t:g}" if isinstance(t, (int, float)) else "",
            "lt_run": f"< {t}",
            "gt_run": f"> {t}",
            "finite": "finite",
            "order": (" > " if self.direction == "max" else " < ").join("≈".join(_short(x) for x in tier)
                                                                       for tier in self.runs)
            + (f" (slack {self.tol:g})" if self.tol else ""),
        }[self.op]

    def evaluate(self, lookup: Lookup) -> tuple[str, Optional[bool]]:
        """``(ours as text, passed)``; ``passed`` is ``None`` when a run is missing."""
        if self.op == "order":
            means = {}
            for label in self.labels():
                stat = lookup(label, self.metric)
                if stat is None:
                    return f"{label}: not run", None
                means[label] = stat[0]
            sign = 1.0 if self.direction == "max" else -1.0
            ok = all(sign * (means[a] - means[b]) > -self.tol
                     for i, upper in enumerate(self.runs) for lower in self.runs[i + 1:] for a in upper for b in lower)
            return ", ".join(f"{_short(k)} {_num(v)}" for k, v in means.items()), ok
        stat = lookup(self.run, self.metric)
        if stat is None:
            return "not run", None
        mean, std, n = stat
        ours = _num(mean) + (f" ± {std:.2g}" if n > 1 and std > 0 else "") + (f" (n={n})" if n > 1 else "")
        if self.op in ("lt_run", "gt_run"):
            other = lookup(str(self.target), self.metric)
            if other is None:
                return ours + f"; {self.target}: not run", None
            ours += f" vs {_num(other[0])}"
            return ours, mean < other[0] if self.op == "lt_run" else mean > other[0]
        if not math.isfinite(mean):
            return ours, False
        t = float(self.target) if self.target is not None else math.nan
        passed = {
            "approx": lambda: abs(mean - t) <= self.tol,
            "rel": lambda: abs(mean - t) <= self.tol * abs(t),
            "eq": lambda: abs(mean - t) <= 1e-9,
            "le": lambda: mean <= t,
            "ge": lambda: mean >= t,
            "finite": lambda: True,
        }[self.op]()
        return ours, passed


    def judge_seeds(self, values: Values) -> Optional[list[SeedOutcome]]:
        """The check on each seed alone: runs are paired by seed (seed s of every run it reads);
        ``None`` when a run has no value. Seeds missing from any of the runs are left out."""
        per_label: dict[str, dict[int, float]] = {}
        for label in self.labels():
            got = values(label, self.metric)
            if not got:
                return None
            per_label[label] = got
        seeds = sorted(set.intersection(*(set(v) for v in per_label.values())))
        out = []
        for s in seeds:
            def lookup(label: str, metric: str, s: int = s) -> Optional[Stat]:
                v = per_label.get(label, {}).get(s)
                return None if v is None else (v, 0.0, 1)

            text, passed = self.evaluate(lookup)
            value = math.nan if self.op == "order" else per_label[self.run][s]
            out.append(SeedOutcome(s, value, bool(passed), text, self._margin({k: v[s] for k, v in per_label.items()})))
        return out

    def _margin(self, at: dict[str, float]) -> float:
        """How far one seed's values are on the passing side (< 0: failing); ranks the worst seed."""
        if self.op == "order":
            sign = 1.0 if self.direction == "max" else -1.0
            return min((sign * (at[a] - at[b]) + self.tol for i, upper in enumerate(self.runs)
                        for lower in self.runs[i + 1:] for a in upper for b in lower), default=0.0)
        v = at[self.run]
        if not math.isfinite(v):
            return -math.inf
        if self.op in ("lt_run", "gt_run"):
            other = at[str(self.target)]
            return other - v if self.op == "lt_run" else v - other
        t = float(self.target) if self.target is not None else math.nan
        return {"approx": lambda: self.tol - abs(v - t), "rel": lambda: self.tol * abs(t) - abs(v - t),
                "eq": lambda: -abs(v - t), "le": lambda: t - v, "ge": lambda: v - t,
                "finite": lambda: 0.0}[self.op]()


Values = Callable[[str, str], Optional[dict[int, float]]]  # (label, metric) -> {seed: value}


@dataclass(frozen=True)
class SeedOutcome:
    """One seed's verdict on a check: ``value`` is the checked run's metric (NaN for ``order``),
    ``text`` what the check reads on that seed, ``margin`` how far on the passing side."""

    seed: int
    value: float
    passed: bool
    text: str
    margin: float


@dataclass(frozen=True)
class Rate:
    """A check over seeds: ``k`` of ``n`` seeds hold; it holds when ``k / n >= min_rate``."""

    k: int
    n: int
    min_rate: float

    @property
    def needed(self) -> int:
        """Seeds that must hold out of ``n``."""
        return math.ceil(self.min_rate * self.n - 1e-9)

    @property
    def holds(self) -> bool:
        return self.n > 0 and self.k >= self.needed

    @property
    def share(self) -> str:
        """e.g. ``≥ 80% of seeds`` (``all seeds`` at a rate of 1)."""
        return "all seeds" if self.min_rate >= 1 else f"≥ {self.min_rate:.0%} of seeds"

    def criterion(self) -> str:
        """e.g. ``≥ 80% of seeds (4/5)``."""
        return f"{self.share} ({self.needed}/{self.n})"


def rate_of(outcomes: list[SeedOutcome], min_rate: float) -> Rate:
    """The rate of the seeds that hold."""
    return Rate(sum(o.passed for o in outcomes), len(outcomes), min_rate)


def _short(label: str) -> str:
    for family in ("table1_mnist_", "table1_cifar10_", "mnist5k_", "digits_", "spheres_augmentation_", "annuli_",
                   "reflection_"):
        if label.startswith(family):
            return label[len(family):]
    return label


def _num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) >= 100:
        return f"{int(x):,}"
    return f"{x:.4g}"


@dataclass(frozen=True)
class Claim:
    """One item of the paper's headline checklist (``shared/paper.md`` §3)."""

    id: str
    text: str
    source: str
    checks: tuple[Check, ...] = field(default_factory=tuple)
    min_rate: float = 0.8  # the fraction of seeds each check must hold on (a check may set its own)
    why_rate: str = "a result the paper shows on one run must hold on most seeds, not all"
    figures: tuple[tuple[str, str], ...] = ()  # (run label, plots/<name>.png) shown beside the table
    note: str = ""  # what the per-seed numbers show (fragility, causes), printed under the table

    def rate_needed(self, check: Check) -> float:
        """The fraction of seeds ``check`` must hold on."""
        return self.min_rate if check.min_rate is None else check.min_rate


def _table_checks(data: str, model: str, acc_tol: float) -> tuple[Check, ...]:
    run = f"table1_{data}_{model}"
    v = PAPER_VALUES[run]
    params = v["params"]
    params_check = (Check("params", "params", "eq", run, params.value, min_rate=1.0,
                          paper=params.text()) if params.source == ARITHMETIC
                    else Check("params (paper rounds to 0.1K)", "params", "approx", run, params.value, tol=50,
                               min_rate=1.0, paper=params.text()))
    return (
        Check("test accuracy", "test/accuracy", "approx", run, v["test/accuracy"].value, tol=acc_tol,
              paper=v["test/accuracy"].text()),
        params_check,
        Check("forward NFE per step", "nfe_forward", "rel", run, v["nfe_forward"].value, tol=0.5,
              paper=v["nfe_forward"].text()),
    )


_MODELS = ("ilnode", "second_order", "anode", "node")


def _ordering(family: str, note: str) -> tuple[Check, ...]:
    il, ho, an, no = (f"{family}_{m}" for m in _MODELS)
    return (
        Check(f"{note}accuracy: IL ≈ 2nd-order > ANODE > NODE", "test/accuracy", "order",
              runs=((il, ho), (an,), (no,)), tol=0.005, paper="IL ≈ 2nd > ANODE ≫ NODE"),
        Check(f"{note}forward NFE: IL and 2nd-order lowest", "nfe_forward", "order",
              runs=((il, ho), (an, no)), direction="min", paper="IL, 2nd lowest"),
    )


LEAK = 1 / 20000  # one point of the outer-ring probe (nodex/paper/probes.py)

CLAIMS: tuple[Claim, ...] = (
    Claim("3.1", "IL-NODE on CIFAR-10: 73.4% test accuracy, 36.1K params (36,088), about 65 NFE", POSTER,
          _table_checks("cifar10", "ilnode", 0.02)),
    Claim("3.2", "2nd-order NODE on MNIST: 99.2%, 20.0K params (20,014), about 43 NFE", POSTER,
          _table_checks("mnist", "second_order", 0.01)),
    Claim("3.3", "MNIST: IL-NODE 99.1% / 20.7K / 44 NFE; ANODE 98.9% / 20.4K / 71; NODE 96.8% / 21.4K / 98", POSTER,
          _table_checks("mnist", "ilnode", 0.01) + _table_checks("mnist", "anode",
                                                                 0.01) + _table_checks("mnist", "node", 0.01)),
    Claim("3.4", "CIFAR-10: ANODE 70.8% / 35.0K / 169 NFE (the highest NFE); NODE 58.9% / 37.1K / 93", POSTER,
          _table_checks("cifar10", "anode", 0.02) + _table_checks("cifar10", "node", 0.02) + (
              Check("ANODE has the highest forward NFE", "nfe_forward", "order",
                    runs=(("table1_cifar10_anode",), ("table1_cifar10_node", "table1_cifar10_ilnode",
                                                      "table1_cifar10_second_order")),
                    paper="169 vs 59–93"),)),
    Claim("3.5", "Ordering: accuracy IL ≈ 2nd-order > ANODE ≫ NODE; IL and 2nd-order need the fewest NFE "
          "(checked on the paper's table runs and on the CPU stand-ins: 5k-MNIST and 8x8 digits)", POSTER,
          _ordering("table1_mnist", "MNIST ") + _ordering("table1_cifar10", "CIFAR-10 ")
          + _ordering("mnist5k", "5k-MNIST stand-in ") + _ordering("digits", "digits stand-in "),
          figures=(("digits_node", "training_curves"), ("digits_ilnode", "training_curves")),
          note=("**The CPU stand-ins' NFE.** The paper reports the mean forward NFE *at convergence* (20 epochs of "
                "full MNIST); here the digits models train 10 epochs of 1,257 8x8 images. IL-NODE needs the fewest "
                "NFE and ANODE the most, as in the paper, but the vanilla NODE, which learns far less in this budget "
                "(its accuracy in the table above), keeps a simple, cheap flow, and the second-order model needs a "
                "few NFE more than it: the NFE ordering is a property of trained models that this budget does not "
                "reach (the `full` budget on a GPU checks the paper's runs). These runs are separate seeds: in a "
                "seed ensemble with an adaptive solver every member reports the ensemble's shared NFE (an earlier "
                "ensemble run gave all five digits NODE seeds 38.5), so per-seed NFE needs separate runs. The "
                "5k-MNIST stand-ins run as separate seeds too (a 5-member conv ensemble was OOM-killed at 12 GB on "
                "the shared machine); their NODE is again the cheapest because it barely learns, and their accuracy "
                "ordering holds on 3 of 5 seeds: at this budget the three augmented models lie within a few points "
                "of each other and their order depends on the seed, a fragility of the stand-in, not a nodex fault.")),
    Claim("3.6", "φ(x) = −x is learned without augmentation by data-controlled and adaptive-depth NODEs; "
          "vanilla and depth-concat fail", "paper.md §3 item 6 [V-poster; code checks data control only]", (
              Check("data-controlled fits (test MSE)", "test/mse", "le", "reflection_data_control", 1e-3, paper="fits"),
              Check("adaptive depth fits (test MSE)", "test/mse", "le", "reflection_adaptive_depth", 1e-3,
                    paper="fits"),
              Check("vanilla fails (test MSE)", "test/mse", "ge", "reflection_vanilla", 0.1, paper="fails",
                    min_rate=1.0),
              Check("depth-concat fails (test MSE)", "test/mse", "ge", "reflection_depthcat", 0.1, paper="fails",
                    min_rate=1.0),
              Check("data-controlled params", "params", "eq", "reflection_data_control", 257, paper="257",
                    min_rate=1.0),
          ), why_rate="fitting must hold on most seeds; the failures are topological, so on every seed",
          note=("Every seed fits or fails as the paper says, and the same holds when each seed is trained alone "
                "(see *Seed ensembles vs separate runs* below). The ensemble's shared dopri5 step sizes move the "
                "data-controlled model's test MSE by under 1% per seed and the adaptive-depth model's by up to a "
                "third (seed 1: 1.3e-4 in the ensemble, 1.9e-4 alone), far inside the 1e-3 threshold: no rate "
                "changes."),
          figures=(("reflection_vanilla", "regression_trajectories"),
                   ("reflection_data_control", "regression_trajectories"),
                   ("reflection_adaptive_depth", "regression_trajectories"), ("reflection_adaptive_depth", "horizon"))),
    Claim("3.7", "Concentric annuli are separated by a 229-parameter data-controlled NODE without augmentation; "
          "vanilla, depth-cat and GalNODE leak", "paper.md §3 item 7 [V-code/fig]", (
              Check("data-controlled separates (test accuracy)", "test/accuracy", "ge", "annuli_data_control", 0.99,
                    paper="separates"),
              Check("data-controlled params", "params", "eq", "annuli_data_control", 229, paper="229", min_rate=1.0),
              Check("data-controlled: no leak (outer ring classified inner)", "probe/outer_leak", "le",
                    "annuli_data_control", 0.0, paper="clean boundary"),
              Check("vanilla leaks (outer ring classified inner)", "probe/outer_leak", "ge", "annuli_vanilla", LEAK,
                    paper="leaks", min_rate=1.0),
              Check("depth-cat leaks (outer ring classified inner)", "probe/outer_leak", "ge", "annuli_depthcat", LEAK,
                    paper="leaks", min_rate=1.0),
              Check("GalNODE leaks (outer ring classified inner)", "probe/outer_leak", "ge", "annuli_galnode", LEAK,
                    paper="leaks", min_rate=1.0),
          ), why_rate="separation must hold on most seeds; a homeomorphic flow leaks on every seed (topology), so "
                      "the leak checks need all seeds",
          note=("**How the leak is measured.** A vanilla, depth-concat or Galërkin flow is a homeomorphism of the "
                "plane, so the region it labels *inner* is the preimage of a half-plane: unbounded, so it must cross "
                "the outer ring somewhere, the thin channel of the authors' decision maps. The 4,096 noisy test "
                "points seldom land in that channel (vanilla seeds 0 and 1 score 100% test accuracy with the "
                "channel plainly visible in their decision maps), so the earlier check, *vanilla's test accuracy "
                "below data control's*, tied at 1.0 and passed or failed by chance. The checks now classify 20,000 "
                "points on the noise-free outer circle (`nodex/paper/probes.py`, `probes.json` in each run) and "
                "report the share labelled inner. **Why some seeds failed before.** `annuli_data_control` inherited "
                "`zero_init_last: true` from `annuli_vanilla`; the authors' data-controlled field keeps the default "
                "init. With the zero-initialised last layer seeds 6, 7 and 8 stalled at 48.9%, 78.2% and 75.0% "
                "test accuracy (issue 15, same with torchdiffeq and autograd); with the authors' init every seed "
                "here separates, with no leak."),
          figures=(("annuli_data_control", "decision_map"), ("annuli_data_control", "state_space"),
                      ("annuli_vanilla", "decision_map"), ("annuli_depthcat", "decision_map"),
                      ("annuli_galnode", "decision_map"))),
    Claim("3.8", "GalNODE and stacked NODEs train with depth-varying θ(s); with an integral loss GalNODE tracks a "
          "depth-varying target and extrapolates beyond the training depth",
          "paper.md §3 item 8 [V-fig, V-rev, tutorial V-code]", (
              Check("stacked on moons (test accuracy)", "test/accuracy", "ge", "stacked_moons", 0.98, paper="trains"),
              Check("GalNODE on spirals (test accuracy)", "test/accuracy", "ge", "galnode_spirals", 0.98,
                    paper="trains"),
              Check("GalNODE extrapolates better than a depth-invariant field", "test/extrapolation_mse", "lt_run",
                    "galerkin_tracking", "galerkin_tracking@depth_none", paper="extrapolates"),
              Check("GalNODE extrapolates better than depth-concat", "test/extrapolation_mse", "lt_run",
                    "galerkin_tracking", "galerkin_tracking@depth_concat", paper="extrapolates"),
          ), figures=(("stacked_moons", "decision_map"), ("stacked_moons", "parameters_evolution"),
                      ("galnode_spirals", "decision_map"), ("galnode_spirals", "parameters_evolution"),
                      ("galerkin_tracking", "tracking"), ("galerkin_tracking@depth_none", "tracking"))),
    Claim("3.9", "A data-controlled CNF draws conditionally from two distributions using two priors "
          "(qualitative: see the sample plots in the run directory)", "paper.md §3 item 9 [V-poster]", (
              Check("conditional CNF trains to a finite test NLL", "test/nll", "finite", "cnf_conditional",
                    paper="qualitative", min_rate=1.0),
          ), figures=(("cnf_conditional", "cnf_samples"),),
          note=("The check only says training worked; the claim is in the figure: one field, two priors, two "
                "targets. With this CPU budget (600 steps) the samples drawn from prior 1 follow the two moons and "
                "those from prior 0 gather at the ring of Gaussians, with visible mass between the modes.")),
    Claim("E6", "Nested spheres (not in §3; tutorial): augmentation (ANODE, IL, partial IL, 2nd order) separates "
          "what the vanilla NODE cannot", CODE_SPHERES, (
              Check("accuracy: augmented > vanilla", "test/accuracy", "order",
                    runs=(("spheres_augmentation_anode", "spheres_augmentation_ilnode",
                           "spheres_augmentation_ilnode_partial",
                           "spheres_augmentation_second_order"), ("spheres_augmentation",)),
                           paper="augmented separate"),
              Check("2nd-order params", "params", "eq", "spheres_augmentation_second_order", 657, paper="657",
                    min_rate=1.0),
          ), figures=(("spheres_augmentation", "trajectories"), ("spheres_augmentation_anode", "trajectories"))),
)


def claim_labels() -> set[str]:
    """Every run label some claim reads."""
    return {label for claim in CLAIMS for check in claim.checks for label in check.labels()}
