"""Toy data: radii, noise, label balance, seeded splits."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from nodex.data import build_data, iterate_batches
from nodex.data.toy import GENERATORS, rings, spheres_ball_shell, spheres_surface
from nodex.errors import ConfigError


def test_rings_have_the_papers_radii_noise_and_labels():
    X, y = rings(20000, torch.Generator().manual_seed(0))
    r = X.norm(dim=1)
    assert y.float().mean() == 0.5  # balanced
    assert abs(r[y == 1].mean() - 1.0) < 0.01 and abs(r[y == 0].mean() - 2.0) < 0.01  # inner = 1 (paper's code)
    # radial spread ≈ the per-coordinate noise std 0.1
    assert abs(r[y == 0].std() - 0.1) < 0.01


def test_spheres_definitions_differ_as_documented():
    Xs, ys = spheres_surface(4000, torch.Generator().manual_seed(0), dim=3)
    rs = Xs.norm(dim=1)
    assert Xs.shape == (4000, 3)
    assert torch.allclose(rs[ys == 1], torch.full_like(rs[ys == 1], 0.5), atol=1e-3)
    assert torch.allclose(rs[ys == 0], torch.full_like(rs[ys == 0], 1.0), atol=1e-3)
    Xb, yb = spheres_ball_shell(4000, torch.Generator().manual_seed(0), dim=2)
    rb = Xb.norm(dim=1)
    assert rb[yb == 1].max() <= 0.5 and rb[yb == 1].min() < 0.1  # filled ball
    assert rb[yb == 0].min() >= 1.0 - 1e-6 and rb[yb == 0].max() <= 1.5 + 1e-6  # shell


@pytest.mark.parametrize("name", ["moons", "spirals", "rings"])
def test_generators_are_balanced_and_seeded(name):
    make = GENERATORS.get(name)
    X1, y1 = make(1000, torch.Generator().manual_seed(3))
    X2, y2 = make(1000, torch.Generator().manual_seed(3))
    assert torch.equal(X1, X2) and torch.equal(y1, y2)
    assert y1.float().mean() == 0.5


def test_splits_are_fixed_by_seed_and_distinct():
    cfg = OmegaConf.create({"name": "moons", "n_train": 64, "n_val": 32, "n_test": 32})
    a, b, c = build_data(cfg, 0), build_data(cfg, 0), build_data(cfg, 1)
    assert torch.equal(a.train[0], b.train[0]) and torch.equal(a.test[0], b.test[0])
    assert not torch.equal(a.train[0], c.train[0])
    assert not torch.equal(a.train[0][:32], a.val[0])
    assert a.n_classes == 2 and a.input_shape == (2,)


def test_resampling_draws_fresh_batches():
    cfg = OmegaConf.create({"name": "rings", "n_train": 8, "n_val": 8, "n_test": 8, "resample": True})
    data = build_data(cfg, 0)
    first, second = data.sampler(16), data.sampler(16)
    assert first[0].shape == (16, 2) and not torch.equal(first[0], second[0])


def test_batches_cover_the_epoch_once():
    X = torch.arange(10.0)[:, None]
    y = torch.arange(10)
    seen = torch.cat([b[1] for b in iterate_batches((X, y), 5, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))


@pytest.mark.parametrize(
    "cfg,needle",
    [
        ({"name": "ringz", "n_train": 8, "n_val": 8, "n_test": 8}, "data.name='ringz' is unknown"),
        ({"name": "rings", "n_train": 0, "n_val": 8, "n_test": 8}, "data.n_train=0"),
        ({"name": "rings", "n_train": 8, "n_val": 8, "n_test": 8, "params": {"nois": 1}}, "data.params"),
    ],
)
def test_bad_data_config_messages(cfg, needle):
    with pytest.raises(ConfigError) as err:
        build_data(OmegaConf.create(cfg), 0)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_fresh_batch_stream_resumes_from_its_saved_state():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "rings", "n_train": 16, "n_val": 16, "n_test": 16, "resample": True})
    sampler = build_data(cfg, seed=3).sampler
    sampler(32)
    state = sampler.get_state()
    expected = [sampler(32) for _ in range(3)]
    again = build_data(cfg, seed=3).sampler  # a resumed run rebuilds the data, then loads the stream's state
    again.set_state(state)
    for (X, y), (X2, y2) in zip(expected, (again(32) for _ in range(3))):
        assert torch.equal(X, X2) and torch.equal(y, y2)
    fresh = build_data(cfg, seed=3).sampler  # without the state it would draw the first batches again
    assert not torch.equal(fresh(32)[0], expected[0][0])
