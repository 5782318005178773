"""Fake image-dataset files for tests: random MNIST idx files and CIFAR-10 pickles (labels cycling 0..9)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from nodex.data.image_files import N_CLASSES
from nodex.data.images import CIFAR_DIR, CIFAR_TRAIN



def write_fake_mnist(root: str | Path, n_train: int = 60, n_test: int = 20, *, gz: bool = False, seed: int = 0) -> Path:
    """Write random MNIST-format idx files (labels cycling 0..9) under ``root/MNIST/raw``;
    for tests and smoke runs of ``data=mnist`` without the real files."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, array: np.ndarray) -> None:
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        payload = header + array.astype(np.uint8).tobytes()
        path = folder / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(payload) if gz else payload)

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write(f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28)))
        write(f"{prefix}-labels-idx1-ubyte", np.arange(n) % N_CLASSES)
    return folder


def write_fake_cifar10(root: str | Path, n_per_batch: int = 10, n_test: int = 20, *, seed: int = 0) -> Path:
    """Write random CIFAR-10 python batches (labels cycling 0..9) under ``root/cifar-10-batches-py``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / CIFAR_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in [*((b, n_per_batch) for b in CIFAR_TRAIN), ("test_batch", n_test)]:
        entry = {b"data": rng.integers(0, 256, size=(n, 3072)).astype(np.uint8), b"labels": [int(i % N_CLASSES) for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return folder
