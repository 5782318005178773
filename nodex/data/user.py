"""A user's own dataset: a ``data`` option with ``_target_`` (``DIR/data/my_data.yaml``).

Contract: the target is called with the YAML's keys (``_target_`` and ``name`` excepted) plus ``seed=`` (the run's
seed) when its signature takes it, and returns ``(train, val, test)``, each an ``(X, y)`` pair of tensors (or arrays)
with ``X`` ``(N, *input_shape)``; ``val`` may be ``None`` (no validation: ``best.pt`` is not kept). Integer labels
``y`` ``(N,)`` make a classification set (classes ``0..K-1``), floating targets ``(N,)`` or ``(N, m)`` a regression
set (``task=regression``). Inputs are cast to the default float dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from nodex.data.bundle import DataBundle
from nodex.errors import DataError
from nodex.targets import call_target

CONTRACT = "it must return (train, val, test), each an (X, y) pair of tensors with one row per sample (val may be None)"


def _split(value: Any, which: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise DataError(f"data._target_={target}: its {which} split is a {type(value).__name__}; {CONTRACT}")
    try:
        X, y = (torch.as_tensor(v) for v in value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"data._target_={target}: its {which} split is not numeric ({exc}); {CONTRACT}") from None
    if X.dim() < 2 or y.dim() < 1 or len(X) != len(y) or len(X) == 0:
        raise DataError(f"data._target_={target}: its {which} split has X {tuple(X.shape)} and y {tuple(y.shape)}; "
                        "X must be (N, *input_shape) and y (N,) or (N, m) with the same N > 0")
    X = X.to(torch.get_default_dtype())
    if y.dtype == torch.bool or not (y.is_floating_point() or y.is_complex()):
        y = y.long().reshape(len(y), -1).squeeze(1) if y.dim() == 2 and y.shape[1] == 1 else y.long()
    else:
        y = y.to(torch.get_default_dtype())
    return X, y


def _check_labels(splits: list[tuple[torch.Tensor, torch.Tensor]], target: str) -> None:
    """Class labels: one per sample, ``0..K-1`` with ``K >= 2``, every class in the training split (the first).

    Raises:
        DataError: naming what is wrong and what to give instead.
    """
    if any(y.dim() != 1 for _, y in splits):
        shape = next(tuple(y.shape) for _, y in splits if y.dim() != 1)
        raise DataError(f"data._target_={target}: integer labels {shape} are class labels, one per sample: give y as "
                        "(N,), or float targets (N, m) for a regression")
    if any(int(y.min()) < 0 for _, y in splits):
        raise DataError(f"data._target_={target}: class labels must be 0..K-1 (a negative label was found)")
    n_classes = max(int(y.max()) + 1 for _, y in splits)
    if n_classes < 2:
        raise DataError(f"data._target_={target}: every label is 0, a single class: a classifier needs labels of at "
                        "least two classes (float targets make a regression)")
    missing = sorted(set(range(n_classes)) - set(torch.unique(splits[0][1]).tolist()))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"data._target_={target}: classes are 0..{n_classes - 1} (the largest label + 1), but the "
                        f"training split has no sample of class {shown}; relabel to 0..K-1 with every class in train")


def target_data(cfg: DictConfig, seed: int) -> DataBundle:
    """Call ``cfg._target_`` and check what it returns (see the module docstring).

    Raises:
        ConfigError: the target cannot be imported or called with the YAML's keys.
        DataError: it returns something other than three ``(X, y)`` splits of matching shapes and label kinds.
    """
    target = str(cfg._target_)
    out = call_target(cfg, "data", {"seed": int(seed)})
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise DataError(f"data._target_={target} returned a {type(out).__name__}; {CONTRACT}")
    train, test = _split(out[0], "train", target), _split(out[2], "test", target)
    val = None if out[1] is None else _split(out[1], "val", target)
    splits = [s for s in (train, val, test) if s is not None]
    if len({tuple(X.shape[1:]) for X, _ in splits}) > 1 or len({y.is_floating_point() for _, y in splits}) > 1:
        raise DataError(f"data._target_={target}: the splits differ in input shape or label kind; {CONTRACT}")
    classification = not train[1].is_floating_point()
    if classification:
        _check_labels(splits, target)
    return DataBundle(
        train=train, val=val, test=test, input_shape=tuple(train[0].shape[1:]),
        n_classes=max(int(y.max()) + 1 for _, y in splits) if classification else None,
        target_dim=None if classification else (int(train[1].shape[1]) if train[1].dim() > 1 else 1),
    )
