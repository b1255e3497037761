"""One registry per architectural axis: a name in YAML maps to one class or object here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An impossible or unknown configuration value.

    The message always names the field (as a dotted path such as ``model.attention.n_kv_heads``),
    the offending value, what is wrong, and where possible the valid values.
    """

    def __init__(self, field: str, value: Any, problem: str, valid: Any = None) -> None:
        message = f"{field}={value!r}: {problem}"
        if valid is not None:
            message += f" (valid: {', '.join(str(v) for v in valid)})"
        super().__init__(message)
        self.field = field
        self.value = value
        self.problem = problem
        self.valid = valid


class Registry(Generic[T]):
    """Names to implementations for one axis; an unknown name raises a ConfigError listing the valid names."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.axis} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def add(self, name: str, entry: T) -> T:
        return self.register(name)(entry)

    def get(self, name: str, field: str | None = None) -> T:
        if name not in self._entries:
            raise ConfigError(field or self.axis, name, f"unknown {self.axis}", valid=self.names())
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
