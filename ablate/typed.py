"""Dataclasses from plain mappings (a config.yaml, a composed Hydra config), with typed errors: an
unknown field, a value of the wrong type or a null where none is allowed is a ConfigError naming
its dotted path and what was expected. Numbers are taken as people type them (5e6 for an integer
budget, a run name that YAML read as a number)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from ablate.registry import ConfigError

C = TypeVar("C")


def from_dict(cls: type[C], data: Mapping[str, Any], prefix: str) -> C:
    """Build dataclass `cls` from `data`, recursing into nested dataclasses, with typed errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, data, f"expected a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(path, value, f"unknown field of {cls.__name__}", valid=names)
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """`value` as the type `hint` names (a dataclass, a mapping, a list, a scalar or an optional
    one), or a ConfigError naming `path` and the type expected."""
    if hint is Any:  # checked where it is used
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # an optional mapping or list
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and typing.get_origin(inner[0]) in (dict, list):
            return None if value is None and type(None) in typing.get_args(hint) else _coerce(inner[0], value, path)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if typing.get_origin(hint) in (dict, list):
        return _coerce_container(hint, value, path)
    return _coerce_scalar(hint, value, path)


def _coerce_container(hint: Any, value: Any, path: str) -> Any:
    if typing.get_origin(hint) is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, value, "expected a mapping")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(item, v, f"{path}.{k}") for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise ConfigError(path, value, "expected a list")
    (item,) = typing.get_args(hint)
    return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]


def _coerce_scalar(hint: Any, value: Any, path: str) -> Any:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(path, value, f"must not be null (expected {_type_name(hint)})")
    for option in options:
        got = _as(option, value, float in options)
        if got is not _NOT:
            return got
    raise ConfigError(path, value, f"expected {_type_name(hint)}")


_NOT = object()  # _as: the value is not of that type


def _as(option: Any, value: Any, float_allowed: bool) -> Any:
    """`value` as the scalar type `option`, or _NOT."""
    is_bool = isinstance(value, bool)
    if option is bool and is_bool:
        return value
    if option is int and isinstance(value, int) and not is_bool:
        return value
    if option is int and isinstance(value, float) and value.is_integer() and not float_allowed:
        return int(value)  # 5e6 and 2e8, as people type budgets, are YAML floats
    if option is float and isinstance(value, (int, float)) and not is_bool:
        return float(value)
    if option is str and isinstance(value, (str, int, float)) and not is_bool:
        return str(value)  # YAML reads run_name=1 as a number
    return _NOT


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join("null" if a is type(None) else a.__name__ for a in args)
    return getattr(hint, "__name__", str(hint))


