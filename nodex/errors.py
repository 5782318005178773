"""Typed errors: each carries a one-line message that says what to change."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class NodexError(Exception):
    """Base class for every error nodex reports to the user as one line."""


class ConfigError(NodexError):
    """A config value is invalid (names the key and the allowed values)."""


class SolverError(NodexError):
    """The ODE solver failed (underflow in dt, max_num_steps exceeded, non-finite state)."""


class DivergenceError(NodexError):
    """The loss became non-finite."""


class CheckpointError(NodexError):
    """A checkpoint or run directory is missing, corrupt or not a nodex checkpoint."""


class DataError(NodexError):
    """A dataset file or the data itself is unusable (names the file and what is wrong with it)."""


class ResourceError(NodexError):
    """The machine ran out of something the run needs: memory, or disk space for its logs."""


@contextmanager
def config_key(prefix: str) -> Iterator[None]:
    """Name the config key in a module's ``ValueError`` about its own argument.

    Modules raise ``ValueError("name=value must be ...")`` about their arguments; a builder that
    passed the config node ``prefix`` (e.g. ``model.field``) as those arguments wraps the call in
    ``with config_key(prefix):`` and the error becomes the one-line :class:`ConfigError`
    ``prefix.name=value must be ...``.
    """
    try:
        yield
    except ValueError as exc:
        raise ConfigError(f"{prefix}.{exc}") from None
