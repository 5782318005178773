"""trainer.num_threads=auto picks one thread for small fields and torch's default for big ones."""

from __future__ import annotations

import os

import pytest
import torch

from nodex.errors import ConfigError
from nodex.train.setup import Pipeline
from nodex.train import threads
from nodex.train.threads import cgroup_cpu_quota, choose_threads, flops_per_evaluation, usable_cpus


def _pipe(compose_cfg, *overrides):
    return Pipeline(compose_cfg(["data.n_val=8", "data.n_test=8", *overrides]))


def test_flop_count_of_the_default_field(compose_cfg):
    pipe = _pipe(compose_cfg, "data.n_train=1024")
    # 2-32-32-2 MLP: (2·32 + 32·32 + 32·2) multiply-adds = 1152 MACs ≈ 2304 FLOP per sample
    flops = flops_per_evaluation(pipe.model, pipe.data.train[0], 1024)
    assert flops == pytest.approx(2304 * 1024, rel=0.05)


@pytest.mark.slow
def test_auto_threads(compose_cfg, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    torch.set_num_threads(2)
    small = _pipe(compose_cfg, "data.n_train=256")
    assert choose_threads("auto", small.model, small.data.train[0], 1024) == 1
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    wide = _pipe(compose_cfg, "data.n_train=256", "model.field.hidden=[256,256]")
    assert choose_threads("auto", wide.model, wide.data.train[0], 1024) == 2  # 136 MFLOP per evaluation
    batch = _pipe(compose_cfg, "data.n_train=256")
    assert choose_threads("auto", batch.model, batch.data.train[0], 4096) == 2  # 9.4 MFLOP
    assert choose_threads(None, wide.model, wide.data.train[0], 1024) == 2


@pytest.mark.parametrize("bad", [0, -2, "many"])
def test_bad_thread_counts(compose_cfg, bad):
    pipe = _pipe(compose_cfg, "data.n_train=16")
    with pytest.raises(ConfigError, match="trainer.num_threads"):
        choose_threads(bad, pipe.model, pipe.data.train[0], 16)


def test_usable_cpus_counts_affinity_quota_load_and_sweep_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert usable_cpus(load=0.0, quota=None) == 8
    assert usable_cpus(load=0.0, quota=2.5) == 2  # cgroup quota of 2.5 CPUs
    assert usable_cpus(load=3.2, quota=None) == 5  # another process keeps ~3 cores busy
    assert usable_cpus(4, load=0.0, quota=None) == 2  # one of 4 local sweep workers
    assert usable_cpus(16, load=7.9, quota=None) == 1  # never below one thread


@pytest.mark.slow
def test_a_wide_field_on_a_loaded_two_core_machine_gets_one_thread(compose_cfg, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.8, 1.5, 1.0))  # a competing process on one core
    torch.set_num_threads(2)
    wide = _pipe(compose_cfg, "data.n_train=256", "model.field.hidden=[256,256]")
    assert choose_threads("auto", wide.model, wide.data.train[0], 1024) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert choose_threads("auto", wide.model, wide.data.train[0], 1024, workers=2) == 1  # two sweep jobs at once


def test_cgroup_quota_files(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_quota(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpu_quota(tmp_path) is None
