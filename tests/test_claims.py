"""The claims can fail: each check passes on the per-seed numbers the reproduction page shows and fails on
a wrong or trivial model's numbers; one pass rule per comparison; the probes measure what the checks read."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import nodex.paper.probes as probes
from nodex.paper.checks import Check, judge_seeds, rate_of
from nodex.paper.claims import CLAIMS, CNF_NLL_MAX, LEAK_MIN
from nodex.paper.paper_values import PAPER_VALUES, load_values


def _claim(cid: str):
    return next(c for c in CLAIMS if c.id == cid)


def _check(cid: str, start: str) -> Check:
    return next(c for c in _claim(cid).checks if c.label.startswith(start))


def _verdict(cid: str, check: Check, table: dict) -> tuple[bool, list[bool]]:
    """``check`` judged over seeds on ``table`` ``{(label, metric): {seed: value}}``: (holds, per seed)."""
    out = judge_seeds(check, lambda label, metric: table.get((label, metric)))
    assert out is not None
    return rate_of(out, _claim(cid).rate_needed(check)).holds, [o.passed for o in out]


def _seeds(*values: float) -> dict[int, float]:
    return dict(enumerate(values))


# --- one pass rule -----------------------------------------------------------------------------


def test_each_rule_decides_ties_once_and_means_and_seeds_agree():
    at = {("a", "m"): 0.5, ("b", "m"): 0.5}
    read = lambda label, metric: at[(label, metric)]  # noqa: E731
    stats = lambda label, metric: (at[(label, metric)], 0.0, 1)  # noqa: E731
    for check, passed in ((Check("x", "m", "le", "a", 0.5), True), (Check("x", "m", "ge", "a", 0.5), True),
                          (Check("x", "m", "lt_run", "a", "b"), False), (Check("x", "m", "gt_run", "a", "b"), False),
                          (Check("x", "m", "order", runs=(("a",), ("b",))), False),
                          (Check("x", "m", "approx", "a", 0.6, tol=0.1), True)):
        assert check.holds(read)[0] is passed, check
        assert check.evaluate(stats)[1] is passed, check  # on the means: the same rule
        seeds = judge_seeds(check, lambda label, metric: {0: at[(label, metric)]})
        assert seeds[0].passed is passed, check
    assert Check("x", "m", "ge", "a", 0.0).holds(lambda *_: float("nan")) == (False, float("-inf"))


def test_a_guard_must_hold_on_the_same_seed():
    guard = Check("classifies", "acc", "ge", "v", 0.95)
    check = Check("leaks", "leak", "ge", "v", 1e-4, requires=(guard,))
    table = {("v", "leak"): _seeds(3e-4, 3e-4), ("v", "acc"): _seeds(0.99, 0.5)}
    out = judge_seeds(check, lambda label, metric: table.get((label, metric)))
    assert [(o.passed, o.text) for o in out] == [(True, "0.0003; classifies 0.99"), (False, "0.0003; classifies 0.5")]
    assert out[1].margin == pytest.approx(0.5 - 0.95)
    assert check.tolerance() == "≥ 0.0001 and acc ≥ 0.95" and check.labels() == ["v"]


# --- 3.6: the reflection ----------------------------------------------------------------------


def test_isotonic_floor_is_the_best_monotone_fit():
    x = torch.linspace(-1, 1, 1000)
    assert probes.isotonic_floor(x, -x) == pytest.approx(1001 / 2997, rel=1e-6)  # (N+1)/(3(N−1))
    assert probes.isotonic_floor(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 0.0, 2.0])) == pytest.approx(1 / 6)
    assert probes.isotonic_floor(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 3.0, 5.0])) == pytest.approx(2 / 3)
    assert probes.isotonic_floor(x, 2 * x) == pytest.approx(0.0, abs=1e-9)


FLOOR = 1001 / 2997
REFLECTION = {  # the page's per-seed test MSE (five seeds, cpu budget) and the probes
    ("reflection_vanilla", "test/mse"): _seeds(0.3343, 0.3342, 0.3345, 0.3343, 0.3343),
    ("reflection_depthcat", "test/mse"): _seeds(0.3344, 0.3347, 0.3346, 0.3346, 0.3346),
    ("reflection_vanilla", "probe/monotone_floor"): _seeds(*[FLOOR] * 5),
    ("reflection_depthcat", "probe/monotone_floor"): _seeds(*[FLOOR] * 5),
    ("reflection_adaptive_depth", "test/mse"): _seeds(0.0001442, 0.000137, 8.215e-05, 0.0001418, 0.0001639),
    ("reflection_adaptive_depth", "probe/mean_abs_depth"): _seeds(0.1195, 0.1193, 0.1183, 0.1179, 0.1226),
}


@pytest.mark.parametrize("run, label", [("reflection_vanilla", "vanilla"), ("reflection_depthcat", "depth-concat")])
def test_fails_means_trained_to_the_monotone_floor(run, label):
    check = _check("3.6", f"{label} fails")
    assert _verdict("3.6", check, REFLECTION) == (True, [True] * 5)
    identity = {**REFLECTION, (run, "test/mse"): _seeds(*[4 * FLOOR] * 5)}  # φ(x) = x scores 4/3
    assert _verdict("3.6", check, identity) == (False, [False] * 5)
    broken = {**REFLECTION, (run, "test/mse"): _seeds(0.3343, 0.2, 0.3345, 0.3343, float("nan"))}  # below the floor
    assert _verdict("3.6", check, broken) == (False, [True, False, True, True, False])


def test_adaptive_depth_fits_with_a_depth_that_does_the_work():
    check = _check("3.6", "adaptive depth")
    assert _verdict("3.6", check, REFLECTION) == (True, [True] * 5)
    flat = {**REFLECTION, ("reflection_adaptive_depth", "probe/mean_abs_depth"): _seeds(*[9.39e-06] * 5)}
    assert _verdict("3.6", check, flat) == (False, [False] * 5)
    unfit = {**REFLECTION, ("reflection_adaptive_depth", "test/mse"): _seeds(*[0.334] * 5)}
    assert _verdict("3.6", check, unfit)[0] is False


class _Reflection:
    """A stand-in adaptive-depth model: S(x) = −0.24·x."""

    def horizon(self, x: torch.Tensor) -> torch.Tensor:
        return -0.24 * x[:, 0]


def test_reflection_probes_read_the_runs_test_split(monkeypatch):
    x = torch.linspace(-1, 1, 1000)[:, None]
    monkeypatch.setattr(probes, "_test_split", lambda run_dir: (_Reflection(), x, -x))
    assert probes.monotone_floor(Path("run")) == pytest.approx(FLOOR, rel=1e-6)
    assert probes.mean_abs_depth(Path("run")) == pytest.approx(0.24 * 0.5005, rel=1e-3)
    monkeypatch.setattr(probes, "_test_split", lambda run_dir: (SimpleNamespace(horizon=None), x, -x))
    with pytest.raises(ValueError, match="no learned horizon"):
        probes.mean_abs_depth(Path("run"))


# --- 3.7: the annuli --------------------------------------------------------------------------

ANNULI = {  # the 2026-12-06 page's per-seed test accuracy and leaks (its 20,000-point probe)
    ("annuli_vanilla", "test/accuracy"): _seeds(1.0, 1.0, 0.9919, 0.9917, 0.9929),
    ("annuli_vanilla", "probe/outer_leak_200k"): _seeds(0.0003, 0.0019, 0.0133, 0.0125, 0.0097),
    ("annuli_depthcat", "test/accuracy"): _seeds(0.9998, 0.9998, 0.9998, 0.9985, 0.9998),
    ("annuli_depthcat", "probe/outer_leak_200k"): _seeds(0.00025, 0.0009, 0.0002, 0.00065, 0.00075),
}


@pytest.mark.parametrize("run, label", [("annuli_vanilla", "vanilla"), ("annuli_depthcat", "depth-cat")])
def test_a_leak_needs_a_real_channel_and_a_model_that_classifies(run, label):
    check = _check("3.7", f"{label} leaks")
    assert _verdict("3.7", check, ANNULI) == (True, [True] * 5)
    all_inner = {(run, "test/accuracy"): _seeds(*[0.5] * 5), (run, "probe/outer_leak_200k"): _seeds(*[1.0] * 5)}
    assert _verdict("3.7", check, all_inner) == (False, [False] * 5)
    stray = {**ANNULI, (run, "probe/outer_leak_200k"): _seeds(0.0003, 1 / 20000, 0.0133, 0.0125, 0.0097)}
    assert _verdict("3.7", check, stray) == (False, [True, False, True, True, True])  # one point of 20,000
    assert LEAK_MIN * 200_000 == pytest.approx(20)


def test_the_leak_probe_is_dense():
    half = lambda x: SimpleNamespace(y_hat=x[:, :1])  # noqa: E731  (class 1 where x_0 > 0.5)
    inner = probes.predicted_class(half, probes.circle(2.0, 200_000), batch=50_000) == 1
    assert float(inner.float().mean()) == pytest.approx(torch.acos(torch.tensor(0.25)).item() / torch.pi, abs=1e-5)


# --- 3.9: the conditional CNF -----------------------------------------------------------------


class _Conditional:
    """A stand-in conditional density: log p(x | k) = −|x − c_k|² − (0 if ``aware`` else 0·k)."""

    def __init__(self, aware: bool) -> None:
        self.aware = aware

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        k = x[:, -1:] if self.aware else torch.zeros_like(x[:, -1:])
        centre = torch.cat([4 * k - 2, torch.zeros_like(k)], dim=1)
        return -((x[:, :2] - centre) ** 2).sum(1)


def test_the_cnf_probe_scores_each_condition_under_its_own_and_the_other(monkeypatch):
    X = torch.tensor([[-2.0, 0.0, 0.0], [-2.0, 1.0, 0.0], [2.0, 0.0, 1.0], [2.0, 1.0, 1.0]])
    monkeypatch.setattr(probes, "_test_split", lambda run_dir: (_Conditional(True), X, X[:, -1]))
    got = probes.cnf_condition_nll(Path("run"))
    assert got == pytest.approx({"cnf_nll_worst": 0.5, "cnf_swap_gap": 16.0})
    monkeypatch.setattr(probes, "_test_split", lambda run_dir: (_Conditional(False), X, X[:, -1]))
    blind = probes.cnf_condition_nll(Path("run"))  # ignores the condition: no gap, condition 1 badly fit
    assert blind["cnf_swap_gap"] == pytest.approx(0.0) and blind["cnf_nll_worst"] == pytest.approx(16.5)


CNF = {  # the rerun's per-seed probes (cpu budget, five seeds): REPRODUCTION.md, claim 3.9
    ("cnf_conditional", "probe/cnf_nll_worst"): _seeds(1.737, 1.863, 1.927, 1.86, 1.935),
    ("cnf_conditional", "probe/cnf_swap_gap"): _seeds(6.098, 3.814, 3.905, 6.034, 3.092),
}


def test_each_condition_must_fit_its_own_target():
    check = _check("3.9", "each condition")
    assert _verdict("3.9", check, CNF) == (True, [True] * 5)
    prior = {**CNF, ("cnf_conditional", "probe/cnf_nll_worst"): _seeds(*[3.37] * 5)}  # an untrained flow (seed 0)
    assert _verdict("3.9", check, prior) == (False, [False] * 5)
    swapped = {**CNF, ("cnf_conditional", "probe/cnf_swap_gap"): _seeds(*[-1.5] * 5)}  # conditions swapped
    assert _verdict("3.9", check, swapped) == (False, [False] * 5)
    assert CNF_NLL_MAX < 3.3


# --- the paper's numbers: one file ------------------------------------------------------------


def test_the_claims_read_the_paper_values_file(tmp_path):
    assert _claim("3.1").text.startswith("IL-NODE on CIFAR-10: 73.4% / 36.1K / 65 NFE")
    assert _check("3.2", "test accuracy").target == PAPER_VALUES["table1_mnist_second_order"]["test/accuracy"].value
    assert PAPER_VALUES["mnist5k_anode"]["params"].value == 20398
    assert PAPER_VALUES["mnist5k_anode"]["test/accuracy"].text() == "98.9% (full MNIST)"
    path = tmp_path / "v.yaml"
    path.write_text("sources: {s: the source}\nvalues:\n  x: {params: {value: 12, source: s}}\n")
    assert load_values(path) == {"x": {"params": load_values(path)["x"]["params"]}}
    assert load_values(path)["x"]["params"].text() == "12" and load_values(path)["x"]["params"].source == "the source"


def test_claim_texts_quote_the_paper_values():
    assert _check("3.4", "ANODE has the highest").paper == "169 vs 59–93"
    assert _claim("3.7").text.startswith("Concentric annuli are separated by a 229-parameter data-controlled NODE")
