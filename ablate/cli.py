"""The key=value command lines of ablate-export and ablate-report."""

from __future__ import annotations

from ablate.registry import ConfigError


def key_values(argv: list[str], allowed: tuple[str, ...]) -> dict[str, str]:
    """{key: value} from `key=value` arguments; ConfigError naming the valid keys otherwise."""
    args = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise ConfigError("argument", arg, "expected key=value", valid=[f"{k}=..." for k in allowed])
        args[key] = value
    return args


def wants_help(argv: list[str]) -> bool:
    return not argv or any(a in ("-h", "--help") for a in argv)
