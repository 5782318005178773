"""Datasets as in-memory tensors on the training device, with seeded splits.

``build_data(cfg, seed, device)`` returns a :class:`DataBundle`. Generated datasets come from
:data:`nodex.data.toy.GENERATORS`; file-backed ones register a loader in :data:`LOADERS`
(``loader(cfg, seed) -> DataBundle`` on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from nodex.data.toy import GENERATORS
from nodex.errors import ConfigError
from nodex.registry import Registry

Split = tuple[torch.Tensor, torch.Tensor]
LOADERS: Registry[Callable[[DictConfig, int], "DataBundle"]] = Registry("data.name")

# Offsets that give each split its own random stream from one seed.
_SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "fresh": 3}


@dataclass
class DataBundle:
    """Train/val/test tensors and what a model needs to fit them.

    Attributes:
        train, val, test: ``(X, y)``; ``X``: ``(N, *input_shape)``.
        input_shape: shape of one input.
        n_classes: number of classes (classification), else ``None``.
        target_dim: regression target width (``None`` for classification).
        sampler: draws a fresh training batch of a given size (generated data), or ``None``.
    """

    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    n_classes: int | None
    target_dim: int | None = None
    sampler: Callable[[int], Split] | None = None

    def to(self, device: torch.device) -> "DataBundle":
        move = lambda split: (split[0].to(device), split[1].to(device))  # noqa: E731
        sampler = self.sampler
        if sampler is not None:
            base = sampler
            sampler = lambda n: move(base(n))  # noqa: E731
        return replace(self, train=move(self.train), val=move(self.val), test=move(self.test), sampler=sampler)


def _generator(seed: int, split: str) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * int(seed) + _SPLIT_OFFSETS[split])


def _sizes(cfg: DictConfig) -> dict[str, int]:
    sizes = {split: int(cfg.get(f"n_{split}", 0)) for split in ("train", "val", "test")}
    for split, n in sizes.items():
        if n <= 0:
            raise ConfigError(f"data.n_{split}={n} must be a positive integer")
    return sizes


def build_data(cfg: DictConfig, seed: int, device: torch.device | str = "cpu") -> DataBundle:
    """Build the dataset named ``cfg.name`` with splits drawn from ``seed``.

    Raises:
        ConfigError: unknown name, bad sizes or generator options.
    """
    name = cfg.name
    if name in GENERATORS:
        bundle = _generated(cfg, seed)
    elif name in LOADERS:
        bundle = LOADERS.get(name)(cfg, seed)
    else:
        raise ConfigError(f"data.name={name!r} is unknown; choose one of: {', '.join(sorted({*GENERATORS.names(), *LOADERS.names()}))}")
    return bundle.to(torch.device(device))


def _generated(cfg: DictConfig, seed: int) -> DataBundle:
    make = GENERATORS.get(cfg.name)
    params = cfg.get("params")
    params = OmegaConf.to_container(params, resolve=True) if params else {}
    sizes = _sizes(cfg)
    try:
        splits = {split: make(n, _generator(seed, split), **params) for split, n in sizes.items()}
    except TypeError as exc:
        raise ConfigError(f"data.params for {cfg.name!r} are invalid ({exc})") from None
    X, y = splits["train"]
    classification = not y.is_floating_point()
    sampler = None
    if cfg.get("resample", False):
        fresh = _generator(seed, "fresh")
        sampler = lambda n: make(n, fresh, **params)  # noqa: E731
    return DataBundle(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        input_shape=tuple(X.shape[1:]),
        n_classes=int(y.max()) + 1 if classification else None,
        target_dim=None if classification else int(y.shape[1]) if y.dim() > 1 else 1,
        sampler=sampler,
    )


def iterate_batches(split: Split, batch_size: int | None, gen: torch.Generator) -> Iterator[Split]:
    """Shuffled mini-batches of one epoch (the whole split when ``batch_size`` is ``None``).
    Indexing happens on the split's device; ``gen`` is a CPU generator."""
    X, y = split
    n = X.shape[0]
    if batch_size is None or batch_size >= n:
        yield X, y
        return
    order = torch.randperm(n, generator=gen).to(X.device)
    for start in range(0, n - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield X[idx], y[idx]


from nodex.data import densities, reflection  # noqa: E402,F401  (register density and reflection generators)
from nodex.data import tracking  # noqa: E402,F401  (registers the circle_tracking generator)


from nodex.data import images  # noqa: E402,F401  (registers the image loaders: digits, mnist5k, mnist, cifar10)
