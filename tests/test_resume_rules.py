"""Resume rules as units: which keys may change, ``resume=auto``, and the new learning rate taking effect."""

from __future__ import annotations

import pytest
import torch

from nodex.errors import CheckpointError
from nodex.train.resume import apply_learning_rate, check_resumable, resume_conflicts, resume_path

SAVED = {"seed": 0, "model": {"name": "vanilla", "field": {"hidden": [32, 32]}},
         "trainer": {"max_steps": 100, "optim": {"name": "adam", "lr": 0.005}, "progress": "auto"},
         "logger": {"tensorboard": True}}


def _with(**changes):
    import copy

    cfg = copy.deepcopy(SAVED)
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_budget_lr_and_io_keys_may_change():
    assert resume_conflicts(SAVED, _with(trainer__max_steps=300, trainer__optim__lr=1e-3, logger__tensorboard=False)) == []


def test_keys_that_decide_the_run_may_not_change():
    current = _with(seed=1, model__field__hidden=[64], trainer__optim__name="sgd")
    assert resume_conflicts(SAVED, current) == ["model.field.hidden", "seed", "trainer.optim.name"]
    with pytest.raises(CheckpointError, match=r"differs from the checkpoint's run in model.field.hidden: \[32, 32\] -> \[64\]"):
        check_resumable(SAVED, current, "x/last.pt")
    assert resume_conflicts(SAVED, {**SAVED, "extra": 1}) == ["extra"]


def test_resume_auto_finds_the_run_dirs_own_checkpoint(tmp_path):
    assert resume_path("auto", tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    assert resume_path("auto", tmp_path) == tmp_path / "checkpoints" / "last.pt"
    assert resume_path(None, tmp_path) is None and resume_path("elsewhere", tmp_path).name == "elsewhere"


def test_a_new_learning_rate_replaces_the_checkpoints():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([p], lr=0.005)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    state = opt.state_dict()
    opt2 = torch.optim.Adam([p], lr=0.001)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=10, gamma=0.5)
    opt2.load_state_dict(state)
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == 0.005  # what torch does: the checkpoint's rate comes back
    assert not apply_learning_rate(opt2, sched2, 0.005, 0.005)  # the run's own rate: nothing changes
    assert apply_learning_rate(opt2, sched2, 0.001, 0.005)
    assert opt2.param_groups[0]["lr"] == 0.001 and sched2.base_lrs == [0.001]


@pytest.mark.parametrize("name", ["step", "exponential", "cosine"])
def test_a_resumed_schedule_continues_where_it_stopped(name):
    def make():
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.Adam([p], lr=0.005)
        sched = {"step": lambda: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7),
                 "exponential": lambda: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9),
                 "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)}[name]()
        return opt, sched

    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert not apply_learning_rate(opt2, sched2, 0.005, 0.005)
    for _ in range(5):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] < 0.005
    assert apply_learning_rate(opt2, sched2, 0.0025, 0.005)  # a new base rate: half, from the same position
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"] / 2, rel=1e-12)


def test_resume_auto_finds_an_ensembles_member_checkpoints(tmp_path):
    assert resume_path("auto", tmp_path, size=2) is None
    (tmp_path / "member-0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "member-0" / "checkpoints" / "last.pt").write_bytes(b"")
    assert resume_path("auto", tmp_path, size=2) == tmp_path
    assert resume_path("elsewhere", tmp_path, 2).name == "elsewhere"


def test_member_optimizer_states_stack_back_into_the_trained_optimizers_state():
    from nodex.train.members import member_optimizer_state, stacked_optimizer_state

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, 2)), torch.nn.Parameter(torch.randn(3))]  # K = 3 members
    opt = torch.optim.Adam(params, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    full = opt.state_dict()
    back = stacked_optimizer_state([member_optimizer_state(opt, k) for k in range(3)])
    assert back["param_groups"] == full["param_groups"]
    for i, entries in full["state"].items():
        assert back["state"][i].keys() == entries.keys()
        assert all(torch.equal(back["state"][i][key], v) for key, v in entries.items())  # step shared, moments stacked


@pytest.mark.slow
def test_an_ensemble_whose_members_saved_different_steps_is_refused_with_one_line(train_run):
    from nodex.train.checkpoint import load_checkpoint, save_checkpoint

    run_dir, _, code, err = train_run("trainer.ensemble=2", "solver=rk4", name="ens")
    assert code == 0, err
    path = run_dir / "member-1" / "checkpoints" / "last.pt"
    save_checkpoint({**load_checkpoint(path), "step": 10}, path)
    _, _, code, err = train_run("trainer.ensemble=2", "solver=rk4", f"trainer.resume={run_dir}",
                                "trainer.max_steps=30", name="again")
    assert code == 1 and err.strip() == (f"nodex: error: trainer.resume={run_dir}: the members' last.pt are at "
                                         "different steps ([10, 20]); the ensemble cannot continue as one run: "
                                         "start it again")
