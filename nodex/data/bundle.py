"""What a dataset is once built: :class:`DataBundle` (splits on a device), the loader
registry for file-backed datasets, and the mini-batch iterator."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
from omegaconf import DictConfig

from nodex.registry import Registry

Split = tuple[torch.Tensor, torch.Tensor]
LOADERS: Registry[Callable[[DictConfig, int], "DataBundle"]] = Registry("data.name")


def seeded_generator(seed: int, stream: int) -> torch.Generator:
    """A random stream of its own from a run's ``seed``: stream ``stream`` (a split, a resampler) of seed ``seed``
    never shares its draws with another stream or another seed's."""
    return torch.Generator().manual_seed(1_000_003 * int(seed) + int(stream))


class FreshSampler:
    """Draws fresh training batches from a generator function with its own random stream; the stream's state is
    part of a checkpoint (:meth:`get_state` / :meth:`set_state`), so a resumed run draws the batches it would have.

    ``sampler(n)`` -> ``(X, y)`` with ``n`` rows, on ``device``.
    """

    def __init__(
        self, make: Callable[..., "Split"], generator: torch.Generator, params: dict, device: torch.device | str = "cpu"
    ) -> None:
        self.make, self.generator, self.params, self.device = make, generator, params, torch.device(device)

    def __call__(self, n: int) -> "Split":
        X, y = self.make(n, self.generator, **self.params)
        return X.to(self.device), y.to(self.device)

    def to(self, device: torch.device | str) -> "FreshSampler":
        """The same stream (shared generator), delivering on ``device``."""
        return FreshSampler(self.make, self.generator, self.params, device)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


@dataclass
class DataBundle:
    """Train/val/test tensors and what a model needs to fit them.

    Attributes:
        train, val, test: ``(X, y)``; ``X``: ``(N, *input_shape)``; ``val`` is ``None`` for a user's dataset
            without one (no validation).
        input_shape: shape of one input.
        n_classes: number of classes (classification), else ``None``.
        target_dim: regression target width (``None`` for classification).
        sampler: draws a fresh training batch of a given size (generated data), or ``None``.
    """

    train: Split
    val: Split | None
    test: Split
    input_shape: tuple[int, ...]
    n_classes: int | None
    target_dim: int | None = None
    sampler: FreshSampler | None = None

    def to(self, device: torch.device) -> "DataBundle":
        move = lambda split: (split[0].to(device), split[1].to(device))  # noqa: E731
        sampler = self.sampler.to(device) if self.sampler is not None else None
        val = None if self.val is None else move(self.val)
        return replace(self, train=move(self.train), val=val, test=move(self.test), sampler=sampler)


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
