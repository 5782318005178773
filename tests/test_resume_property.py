"""Resume is the run it continues, as a property: stop a run at random (seeded) steps with SIGINT, SIGTERM, SIGUSR2
or kill -9, resume it each time with ``trainer.resume=auto``, and the result equals the uninterrupted run bit for
bit: weights, optimizer and scheduler state, ``result.json`` metrics and NFE, every ``metrics.jsonl`` row (but the
wall-clock ``time/*`` values).

Signals are sent in-process from inside the step: SIGINT while the step computes its gradients (it stops at once and
the batch it drew is not consumed) or while its update is applied (it waits for the step boundary); SIGTERM and
SIGUSR2 anywhere in the step. Each factor is covered at least once: rk4 / dopri5 / tsit5, autograd / adjoint,
resample on / off, minibatches, the step / exponential / cosine schedulers, a CNF (Hutchinson trace: the global RNG),
a 2-member seed ensemble; kill -9 runs in a subprocess."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

from pathlib import Path

import pytest
import torch

from nodex.train.checkpoint import load_checkpoint
from nodex.train.loop import Trainer

STEPS = 24  # checkpoints at 10 and 20, the step/2 schedulers step 2-3 times: the property holds at any length
TINY = [f"trainer.max_steps={STEPS}", "data.n_train=64", "data.n_val=32", "data.n_test=64", "trainer.plots=false",
        "logger.tensorboard=false", "trainer.log_every=5", "trainer.val_every=10", "trainer.checkpoint_every=10",
        "model.field.hidden=[16]", "trainer.resume=auto", "trainer.num_threads=1"]
CASES = {
    "rk4-resample-step": ["solver=rk4", "data.resample=true", "trainer.batch_size=32", "trainer.scheduler.name=step",
                          "trainer.scheduler.step_size=7", "trainer.scheduler.gamma=0.7"],
    "dopri5-adjoint-minibatch-exponential": ["solver=dopri5", "solver.sensitivity=adjoint", "data.resample=false",
                                             "trainer.batch_size=24", "trainer.scheduler.name=exponential",
                                             "trainer.scheduler.gamma=0.95"],
    "tsit5-minibatch-cosine": ["solver=tsit5", "data.resample=false", "trainer.batch_size=16",
                               "trainer.scheduler.name=cosine"],
    "cnf-hutchinson": ["experiment=cnf_gaussians", "solver=rk4", "solver.step_size=0.25", "model.trace=hutchinson",
                       "trainer.batch_size=32", "model.field.hidden=[16]"],
    "ensemble-rk4-step": ["trainer.ensemble=2", "solver=rk4", "trainer.scheduler.name=step",
                          "trainer.scheduler.step_size=9", "trainer.scheduler.gamma=0.5"],
    # STEER's end depths come from the model's own generator, the Jacobian term's noise from the global RNG
    "steer-regularised": ["model.horizon.steer=0.3", "task.regularizer.kinetic=0.01", "task.regularizer.jacobian=0.01"],
}
# (case, signals in the order they stop the run): each case stopped twice, each signal at least twice overall
STOPS = [("rk4-resample-step", ["SIGINT", "SIGTERM"]),
         ("dopri5-adjoint-minibatch-exponential", ["SIGUSR2", "SIGINT@update"]),
         ("tsit5-minibatch-cosine", ["SIGINT", "SIGINT@update"]),
         ("cnf-hutchinson", ["SIGINT", "SIGTERM"]),
         ("ensemble-rk4-step", ["SIGINT", "SIGUSR2"]),
         ("steer-regularised", ["SIGINT", "SIGINT"])]


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def _member_dirs(run_dir: Path) -> list[Path]:
    members = sorted(run_dir.glob("member-*"))
    return members or [run_dir]


def _assert_same_run(whole: Path, resumed: Path) -> None:
    for a_dir, b_dir in zip(_member_dirs(whole), _member_dirs(resumed), strict=True):
        a, b = load_checkpoint(a_dir / "checkpoints" / "last.pt"), load_checkpoint(b_dir / "checkpoints" / "last.pt")
        assert a["step"] == b["step"] == STEPS
        for key, value in a["model"].items():
            if isinstance(value, dict):  # a module's extra state: STEER's generator
                assert value.keys() == b["model"][key].keys() and all(
                    torch.equal(v, b["model"][key][k]) for k, v in value.items()), key
            else:
                assert torch.equal(value, b["model"][key]), key
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        for i, entries in a["optimizer"]["state"].items():
            assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][i][k]))
                       for k, v in entries.items())
        assert a["scheduler"] == b["scheduler"]
        ra, rb = (json.loads((d / "result.json").read_text()) for d in (a_dir, b_dir))
        assert rb["status"] == "completed" and rb["steps"] == STEPS
        assert (rb["metrics"], rb["nfe_forward"], rb["nfe_backward"]) == (ra["metrics"], ra["nfe_forward"],
                                                                            ra["nfe_backward"])
        assert _rows(b_dir) == _rows(a_dir)


@pytest.fixture(scope="module")
def whole_runs(tmp_path_factory):
    """``whole(cli, case) -> run_dir``: the uninterrupted run of ``case`` (seed 3), trained once for the module (the
    kill -9 test compares with the tsit5 case's)."""
    runs: dict[str, Path] = {}

    def whole(cli, case: str) -> Path:
        if case not in runs:
            run_dir = tmp_path_factory.mktemp("whole") / case
            code, _, err = cli(["train", *TINY, *CASES[case], "seed=3", f"hydra.run.dir={run_dir}"])
            assert code == 0, err
            runs[case] = run_dir
        return runs[case]

    return whole


@pytest.fixture
def stop_at(monkeypatch):
    """``stop_at(step, how)``: the next run sends itself ``how`` during step ``step``."""
    plan: dict = {}
    real_step, real_commit = Trainer.train_step, Trainer._commit

    def train_step(self, X, y, optimizer, step=0):
        if plan.get("step") == step and plan.get("when") == "gradients":
            plan.clear()
            os.kill(os.getpid(), plan_signal["signum"])
        return real_step(self, X, y, optimizer, step)

    def commit(self):
        real_commit(self)
        if plan.get("step") == self.step + 1 and plan.get("when") == "update":
            plan.clear()
            os.kill(os.getpid(), plan_signal["signum"])

    plan_signal: dict = {}
    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(Trainer, "_commit", commit)

    def _stop_at(step: int, how: str) -> None:
        name, _, when = how.partition("@")
        plan_signal["signum"] = getattr(signal, name)
        plan.update(step=step, when=when or "gradients")

    return _stop_at


@pytest.mark.slow
@pytest.mark.parametrize("case, signals", STOPS, ids=[c for c, _ in STOPS])
def test_a_run_stopped_and_resumed_at_random_steps_is_the_uninterrupted_run(tmp_path, cli, whole_runs, stop_at, case,
                                                                            signals):
    overrides = [*TINY, *CASES[case], "seed=3"]
    whole = whole_runs(cli, case)
    rng = random.Random(f"{case}-{signals}")
    steps = sorted(rng.sample(range(2, STEPS), len(signals)))
    cut = tmp_path / "cut"
    for step, how in zip(steps, signals):
        stop_at(step, how)
        code, _, err = cli(["train", *overrides, f"hydra.run.dir={cut}"])
        expected = 130 if how.startswith("SIGINT") else 128 + getattr(signal, how).value
        assert code == expected, (how, step, err)
        if how.startswith("SIGINT"):
            last = "member-*/checkpoints/last.pt" if "ensemble" in case else "checkpoints/last.pt"
            assert err.strip() == f"nodex: error: interrupted; last checkpoint saved in {cut}/{last}"
        saved = load_checkpoint(_member_dirs(cut)[0] / "checkpoints" / "last.pt")["step"]
        assert saved == (step - 1 if how == "SIGINT" else step), how  # SIGINT in the gradients: that step undone
    stop_at(-1, "SIGINT")  # no more stops
    code, _, err = cli(["train", *overrides, f"hydra.run.dir={cut}"])
    assert code == 0, err
    _assert_same_run(whole, cut)


KILL_AT = ("import os, signal, sys; from nodex.train.loop import Trainer; real = Trainer.train_step\n"
           "kill_at = int(sys.argv[1])  # read now: the CLI sets sys.argv to the sub-command's own while it runs\n"
           "def train_step(self, X, y, optimizer, step=0):\n"
           "    if step == kill_at: os.kill(os.getpid(), signal.SIGKILL)\n"
           "    return real(self, X, y, optimizer, step)\n"
           "Trainer.train_step = train_step; from nodex.cli import main; sys.exit(main(sys.argv[2:]))")


def _nodex(run_dir: Path, overrides: list[str], kill_at: int = -1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", KILL_AT, str(kill_at), "train", *overrides,
                             f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_bit_for_bit_with_its_schedule(tmp_path, cli, whole_runs):
    overrides = [*TINY, *CASES["tsit5-minibatch-cosine"], "seed=3"]
    whole, cut = whole_runs(cli, "tsit5-minibatch-cosine"), tmp_path / "cut"
    step = random.Random("kill -9").randrange(11, STEPS)  # after the first checkpoint (step 10)
    proc = _nodex(cut, overrides, kill_at=step)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["step"] == (step - 1) // 10 * 10
    code, _, err = cli(["train", *overrides, f"hydra.run.dir={cut}"])  # the requeued job
    assert code == 0, err
    _assert_same_run(whole, cut)


@pytest.mark.slow
def test_a_sigint_after_steers_draw_rewinds_the_draw_with_the_step(tmp_path, cli, whole_runs, monkeypatch):
    """A Ctrl-C that lands inside a step after STEER drew its end depth: the step is undone, and so is the draw (the
    model's own generator is rewound with the batch streams), so the resumed run is the uninterrupted one."""
    from nodex.models.regularizers import SteerDepth

    real, calls = SteerDepth.draw, {"n": 0}

    def draw(self):
        value = real(self)
        calls["n"] += 1
        if calls["n"] == 7:  # step 7's training solve, after its depth was drawn
            os.kill(os.getpid(), signal.SIGINT)
        return value

    monkeypatch.setattr(SteerDepth, "draw", draw)
    overrides, cut = [*TINY, *CASES["steer-regularised"], "seed=3"], tmp_path / "cut"
    code, _, err = cli(["train", *overrides, f"hydra.run.dir={cut}"])
    assert code == 130, err
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["step"] == 6
    monkeypatch.setattr(SteerDepth, "draw", real)
    code, _, err = cli(["train", *overrides, f"hydra.run.dir={cut}"])
    assert code == 0, err
    _assert_same_run(whole_runs(cli, "steer-regularised"), cut)


@pytest.mark.slow
def test_validation_and_figures_leave_the_training_streams_alone(tmp_path, cli):
    """A stochastic evaluation (a CNF's Hutchinson trace in validation and figures) draws nothing the training draws:
    the training rows and weights do not depend on val_every or plots (so neither does a resume that changes them)."""
    base = [*TINY, *CASES["cnf-hutchinson"], "model.eval_trace=hutchinson", "seed=3", "trainer.resume=null"]
    runs = {"sparse": ["trainer.val_every=20"],
            "dense": ["trainer.val_every=5", "trainer.plots=true", "trainer.plot_every=5"]}
    for name, extra in runs.items():
        code, _, err = cli(["train", *base, *extra, f"hydra.run.dir={tmp_path / name}"])
        assert code == 0, err
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in runs)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    train = [[r for r in _rows(tmp_path / name) if "train/loss" in r] for name in runs]
    assert train[0] == train[1] and len(train[0]) == STEPS // 5 + 1
