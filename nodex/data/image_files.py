"""Readers for the on-disk image datasets, validated: MNIST's idx files (raw or ``.gz``) and CIFAR-10's python
pickles. Every problem is one :class:`~nodex.errors.DataError` line naming the file and what is wrong: a corrupt
archive, a wrong magic number, a truncated payload, a wrong image size, image and label counts that differ, labels
that are not integers in ``0..9``. Pickles are read with an unpickler that builds only numpy arrays and plain values.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nodex.errors import DataError

N_CLASSES = 10
MNIST_IMAGE = (28, 28)
CIFAR_IMAGE = (3, 32, 32)
REPLACE = "replace it with the original file"


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes as an array of its declared shape.

    Raises:
        DataError: unreadable or corrupt ``.gz``, not an unsigned-byte idx file, or a payload of the wrong size.
    """
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path} cannot be read ({str(exc) or type(exc).__name__}); {REPLACE}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes; replace it with the original MNIST file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated (its header declares {ndim} dimensions); download it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(
            f"{path} holds {data.size} values but its header declares {int(np.prod(shape))}; download it again"
        )
    return data.reshape(shape)


def check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """``labels`` as int64 after checking they are integers in ``0..N_CLASSES-1``.

    Raises:
        DataError: non-integer labels, or labels out of range (the message shows the offending range).
    """
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path} has labels of type {labels.dtype} (need integers 0..{N_CLASSES - 1}); {REPLACE}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise DataError(f"{path} has labels in {labels.min()}..{labels.max()} (need 0..{N_CLASSES - 1}); {REPLACE}")
    return labels


def mnist_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One MNIST split: images ``(N, 1, 28, 28)`` float in [0, 1] and labels ``(N,)`` int64.

    Raises:
        DataError: see :func:`read_idx` and :func:`check_labels`; a wrong image size; counts that differ.
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != MNIST_IMAGE:
        raise DataError(f"{images_path} holds images of shape {images.shape[1:]} (need {MNIST_IMAGE}); {REPLACE}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {labels.shape} labels; {REPLACE}"
        )
    X = torch.from_numpy(images.astype(np.float32)).unsqueeze(1) / 255.0
    return X, torch.from_numpy(check_labels(labels, labels_path))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of lists and numpy arrays) and refuses anything else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core") if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _cifar_entry(path: Path) -> dict[str, Any]:
    try:
        entry = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({exc}); {REPLACE}") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path} holds a {type(entry).__name__}, not the dict of a CIFAR-10 batch; {REPLACE}")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"{path} lacks the 'data'/'labels' entries of a CIFAR-10 batch; {REPLACE}")
    return entry


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``cifar-10-batches-py`` pickle -> ``(N, 3, 32, 32)`` uint8 images and ``(N,)`` int64 labels.

    Raises:
        DataError: not a CIFAR batch, images that are not 3072 bytes each, counts that differ, bad labels.
    """
    entry = _cifar_entry(path)
    try:
        data = np.asarray(entry["data"])
        labels = np.asarray(entry["labels"])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path} has unreadable data or labels ({exc}); {REPLACE}") from None
    size = int(np.prod(CIFAR_IMAGE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size:
        raise DataError(
            f"{path} holds data of shape {data.shape} and type {data.dtype} (need (N, {size}) uint8); {REPLACE}"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path} has {len(data)} images but {labels.size} labels; {REPLACE}")
    labels = check_labels(labels, path)
    return torch.from_numpy(data.reshape(-1, *CIFAR_IMAGE).copy()), torch.from_numpy(labels)
