"""Name -> builder registries for config slots, with errors that list the valid names."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from nodex.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of builders; ``key`` is the config key used in error messages."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key}: {name!r} registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"{self.key}={name!r} is unknown; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
