"""A claim's checks: each pass rule stated once (:meth:`Check.margin`, :meth:`Check.passes`), each check
judged on every seed alone (:func:`judge_seeds`) and over seeds (:class:`Rate`). On one seed a check reads
that seed's runs, computes a *margin* (how far on the passing side) and passes at a margin ≥ 0 (> 0 for
:data:`STRICT`); a check may *require* guards on the same seed ("leaks" only for a model that classifies)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

Stat = tuple[float, float, int]  # mean, std, number of completed runs
Lookup = Callable[[str, str], Optional[Stat]]
Values = Callable[[str, str], Optional[dict[int, float]]]  # (label, metric) -> {seed: value}
Reading = Callable[[str, str], float]  # (label, metric) -> one value

STRICT = ("lt_run", "gt_run", "order")  # pass only with a positive margin (a tie fails)


@dataclass(frozen=True)
class Check:
    """One pass/fail comparison. ``op`` and its margin (≥ 0 passes; > 0 for :data:`STRICT`):

    ``approx``  tol − |ours − target|            ``rel``  tol·|target| − |ours − target|
    ``eq``      1e-9 − |ours − target|           ``le``/``ge``  target − ours / ours − target
    ``lt_run``/``gt_run``  the same metric of run ``target`` minus ours / ours minus it
    ``band``    ours − (metric ``target`` of the same run) inside ``band`` = (lo, hi)
    ``order``   ``runs`` is a ranking (tuples of labels, best first, by ``direction``): the
                smallest gap between a higher and a lower tier, plus the slack ``tol``.
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
    band: tuple[float, float] = (0.0, 0.0)
    requires: tuple[Check, ...] = ()  # guards: checks that must hold on the same seed too

    def reads(self) -> list[tuple[str, str]]:
        """Every ``(run label, metric)`` this check and its guards read."""
        if self.op == "order":
            own = [(label, self.metric) for tier in self.runs for label in tier]
        elif self.op in ("lt_run", "gt_run"):
            own = [(self.run, self.metric), (str(self.target), self.metric)]
        elif self.op == "band":
            own = [(self.run, self.metric), (self.run, str(self.target))]
        else:
            own = [(self.run, self.metric)]
        return own + [pair for guard in self.requires for pair in guard.reads() if pair not in own]

    def labels(self) -> list[str]:
        """Every run label this check reads, in order, without repeats."""
        return list(dict.fromkeys(label for label, _ in self.reads()))

    def tolerance(self) -> str:
        """The pass criterion in words (with its guards)."""
        t = self.target
        words = {
            "approx": lambda: f"within ±{self.tol:g} of {t:g}", "rel": lambda: f"within ±{self.tol:.0%} of {t:g}",
            "eq": lambda: f"exactly {t:g}", "le": lambda: f"≤ {t:g}", "ge": lambda: f"≥ {t:g}",
            "lt_run": lambda: f"< {t}", "gt_run": lambda: f"> {t}",
            "band": lambda: f"{self.band[0]:+g} … {self.band[1]:+g} of {t}",
            "order": lambda: (" > " if self.direction == "max" else " < ").join(
                "≈".join(short(x) for x in tier) for tier in self.runs)
            + (f" (slack {self.tol:g})" if self.tol else ""),
        }[self.op]()
        return " and ".join([words, *(f"{g.metric} {g.tolerance()}" for g in self.requires)])

    def margin(self, at: Reading) -> float:
        """How far the values ``at(label, metric)`` of one seed (or the means) lie on the passing
        side of this check's own rule (guards not included); ``-inf`` for a non-finite value."""
        if self.op == "order":
            sign = 1.0 if self.direction == "max" else -1.0
            gaps = [sign * (at(a, self.metric) - at(b, self.metric)) for i, upper in enumerate(self.runs)
                    for lower in self.runs[i + 1:] for a in upper for b in lower]
            return _finite(min(gaps, default=0.0) + self.tol)
        v = at(self.run, self.metric)
        if self.op in ("lt_run", "gt_run"):
            other = at(str(self.target), self.metric)
            return _finite(other - v if self.op == "lt_run" else v - other)
        if self.op == "band":
            d = v - at(self.run, str(self.target))
            return _finite(min(d - self.band[0], self.band[1] - d))
        t = float(self.target) if self.target is not None else math.nan
        return _finite({"approx": lambda: self.tol - abs(v - t), "rel": lambda: self.tol * abs(t) - abs(v - t),
                        "eq": lambda: 1e-9 - abs(v - t), "le": lambda: t - v, "ge": lambda: v - t}[self.op]())

    def passes(self, margin: float) -> bool:
        """The one pass rule: a margin ≥ 0 (> 0 for the strict comparisons)."""
        return margin > 0 if self.op in STRICT else margin >= 0

    def holds(self, at: Reading) -> tuple[bool, float]:
        """``(passed, margin)`` of this check and its guards on the values ``at``; the margin is the
        smallest of theirs (it ranks the worst seed)."""
        parts = [(c.passes(m), m) for c in (self, *self.requires) for m in [c.margin(at)]]
        return all(p for p, _ in parts), min(m for _, m in parts)

    def reading(self, at: Reading) -> str:
        """What this check reads on one seed, as text (``1 vs 0.9``, ``0.3343 (monotone_floor +0.00031)``,
        ``0.0003; classifies 1`` with a guard)."""
        if self.op == "order":
            return ", ".join(f"{short(label)} {num(at(label, self.metric))}" for label in self.labels()
                             if (label, self.metric) in self.reads())
        v = num(at(self.run, self.metric))
        if self.op in ("lt_run", "gt_run"):
            v += f" vs {num(at(str(self.target), self.metric))}"
        elif self.op == "band":
            ref = str(self.target)
            v += f" ({ref.split('/')[-1]} {at(self.run, self.metric) - at(self.run, ref):+.2g})"
        return v + "".join(f"; {g.label} {num(at(g.run, g.metric))}" for g in self.requires)

    def evaluate(self, lookup: Lookup) -> tuple[str, Optional[bool]]:
        """``(ours as text, passed)`` on the mean of each run (``lookup``: label, metric -> Stat);
        ``passed`` is ``None`` when a run is missing."""
        stats = {pair: lookup(*pair) for pair in self.reads()}
        missing = [label for (label, _), got in stats.items() if got is None]
        head = stats.get((self.run, self.metric))
        ours = "" if head is None else num(head[0]) + (f" ± {head[1]:.2g}" if head[2] > 1 and head[1] > 0 else "") + (
            f" (n={head[2]})" if head[2] > 1 else "")
        if missing:
            return ("not run" if head is None or self.op == "order" else f"{ours}; {missing[0]}: not run"), None
        at: Reading = lambda label, metric: stats[(label, metric)][0]  # noqa: E731
        text = self.reading(at)
        return (text if self.op == "order" else ours + text[len(num(head[0])):]), self.holds(at)[0]


@dataclass(frozen=True)
class SeedOutcome:
    """One seed's verdict: the checked run's ``value`` (NaN for ``order``), what the check reads, the margin."""

    seed: int
    value: float
    passed: bool
    text: str
    margin: float


def judge_seeds(check: Check, values: Values) -> Optional[list[SeedOutcome]]:
    """``check`` on each seed alone: runs paired by seed (seed s of every run it reads); seeds
    missing from any of them are left out; ``None`` when a run has no value at all."""
    per_pair: dict[tuple[str, str], dict[int, float]] = {}
    for pair in check.reads():
        got = values(*pair)
        if not got:
            return None
        per_pair[pair] = got
    seeds = sorted(set.intersection(*(set(v) for v in per_pair.values())))
    out = []
    for s in seeds:
        at: Reading = lambda label, metric, s=s: per_pair[(label, metric)][s]  # noqa: E731
        passed, margin = check.holds(at)
        value = math.nan if check.op == "order" else at(check.run, check.metric)
        out.append(SeedOutcome(s, value, passed, check.reading(at), margin))
    return out


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


def short(label: str) -> str:
    """A run label without its experiment family's prefix (``annuli_vanilla`` -> ``vanilla``)."""
    for family in ("table1_mnist_", "table1_cifar10_", "mnist5k_", "digits_", "spheres_augmentation_", "annuli_",
                   "reflection_"):
        if label.startswith(family):
            return label[len(family):]
    return label


def num(x: float) -> str:
    """A number as the checks print it: 4 significant digits, big integers with commas."""
    if not math.isfinite(x):
        return str(x)
    if x == int(x) and abs(x) >= 100:
        return f"{int(x):,}"
    return f"{x:.4g}"


def _finite(margin: float) -> float:
    return margin if math.isfinite(margin) else -math.inf
