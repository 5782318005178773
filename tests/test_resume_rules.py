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
    apply_learning_rate(opt2, sched2, 0.001)
    assert opt2.param_groups[0]["lr"] == 0.001 and sched2.base_lrs == [0.001]
