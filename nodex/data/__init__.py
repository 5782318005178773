"""Datasets as in-memory tensors on the training device, with seeded splits.

``build_data(cfg, seed, device)`` returns a :class:`DataBundle`. Generated datasets come from
:data:`nodex.data.toy.GENERATORS`; file-backed ones register a loader in :data:`LOADERS`
(``loader(cfg, seed) -> DataBundle`` on the CPU).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from nodex.data.bundle import LOADERS, DataBundle, FreshSampler, Split, iterate_batches, seeded_generator
from nodex.data.toy import GENERATORS
from nodex.data.user import target_data
from nodex.errors import ConfigError, DataError
from nodex.targets import has_target, target_label

# Offsets that give each split its own random stream from one seed.
_SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "fresh": 3}


def _generator(seed: int, split: str) -> torch.Generator:
    return seeded_generator(seed, _SPLIT_OFFSETS[split])


def _sizes(cfg: DictConfig) -> dict[str, int]:
    """The split sizes of a generated dataset (``null``, "every sample", has no meaning for one).

    Raises:
        ConfigError: a size that is null or not positive.
    """
    sizes = {}
    for split in ("train", "val", "test"):
        n = cfg.get(f"n_{split}", 0)
        if n is None:
            raise ConfigError(f"data.n_{split}=null: {cfg.name} is generated, it has no fixed number of samples; give "
                              f"data.n_{split} a number of samples (e.g. 1024)")
        if int(n) <= 0:
            raise ConfigError(f"data.n_{split}={int(n)} must be a positive integer")
        sizes[split] = int(n)
    return sizes


def build_data(cfg: DictConfig, seed: int, device: torch.device | str = "cpu") -> DataBundle:
    """Build the dataset named ``cfg.name`` with splits drawn from ``seed``.

    Raises:
        ConfigError: unknown name, bad sizes or generator options.
    """
    if has_target(cfg):
        name = target_label(cfg)
        bundle = target_data(cfg, seed)
    elif (name := cfg.name) in GENERATORS:
        bundle = _generated(cfg, seed)
    elif name in LOADERS:
        bundle = LOADERS.get(name)(cfg, seed)
    else:
        raise ConfigError(
            f"data.name={name!r} is unknown; choose one of: "
            f"{', '.join(sorted({*GENERATORS.names(), *LOADERS.names()}))}"
        )
    check_finite(bundle, name)
    check_classes(bundle, cfg)
    return bundle.to(torch.device(device))


def data_name(cfg: DictConfig) -> str:
    """A dataset's name for logs and messages: ``data.name``, or a user target's label."""
    return target_label(cfg) or str(cfg.get("name"))


def check_classes(bundle: DataBundle, cfg: DictConfig) -> None:
    """The classes the model is built for (``bundle.n_classes``; a generated set counts them in its training split)
    must cover every label of the val/test splits (``data.n_train=1`` would build a one-class model and fail on the
    first validation label). A dataset whose class count is fixed (MNIST: 10) may train on a subset of them.

    Raises:
        ConfigError: naming ``data.n_train`` and the smallest size that can hold every class.
    """
    if bundle.n_classes is None:
        return
    labels = [split[1] for split in (bundle.train, bundle.val, bundle.test) if split is not None]
    n_classes = max(bundle.n_classes, *(int(y.max()) + 1 for y in labels if y.numel()))
    present = int(torch.unique(labels[0]).numel())
    if bundle.n_classes < n_classes:
        raise ConfigError(
            f"data.n_train={len(labels[0])} leaves {n_classes - present} of the {n_classes} classes of "
            f"{data_name(cfg)} out of the training split: raise data.n_train to at least {n_classes}"
        )


def check_finite(bundle: DataBundle, name: str) -> None:
    """Non-finite inputs are the data's fault, not the solver's: say so before any solve.

    Raises:
        DataError: a split holds NaN or infinite values (names the split and how many).
    """
    for split in ("train", "val", "test"):
        if getattr(bundle, split) is None:
            continue
        X = getattr(bundle, split)[0]
        if X.is_floating_point() and not torch.isfinite(X).all():
            bad = int((~torch.isfinite(X)).sum())
            raise DataError(
                f"data.name={name}: the {split} split holds {bad} non-finite input values (NaN or inf); "
                "fix the data or its data.mean/data.std"
            )


def _generated(cfg: DictConfig, seed: int) -> DataBundle:
    make = GENERATORS.get(cfg.name)
    params = cfg.get("params")
    params = OmegaConf.to_container(params, resolve=True) if params else {}
    sizes = _sizes(cfg)
    try:
        splits = {split: make(n, _generator(seed, split), **params) for split, n in sizes.items()}
    except TypeError as exc:
        raise ConfigError(f"data.params for {cfg.name!r} are invalid ({exc})") from None
    except (IndexError, ValueError, RuntimeError) as exc:  # e.g. radii=[] for two radii, a negative dim
        given = ", ".join(f"data.params.{k}={v}" for k, v in params.items())
        raise ConfigError(f"{given} do not make a {cfg.name} dataset ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                          f"see configs/data/{cfg.name}.yaml for the values it takes") from None
    X, y = splits["train"]
    if 0 in X.shape[1:]:
        raise ConfigError(f"data.params for {cfg.name!r} give samples of shape {tuple(X.shape[1:])}: every dimension "
                          "must be at least 1 (e.g. data.params.dim=2)")
    classification = not y.is_floating_point()
    sampler = None
    if cfg.get("resample", False):
        sampler = FreshSampler(make, _generator(seed, "fresh"), params)
    return DataBundle(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        input_shape=tuple(X.shape[1:]),
        n_classes=int(y.max()) + 1 if classification else None,
        target_dim=None if classification else int(y.shape[1]) if y.dim() > 1 else 1,
        sampler=sampler,
    )


# Each module registers its datasets beside its builders: generators in GENERATORS, loaders in LOADERS.
from nodex.data import circle_tracking, densities, images, reflection  # noqa: E402,F401

__all__ = ["LOADERS", "DataBundle", "FreshSampler", "Split", "build_data", "data_name", "iterate_batches"]
