"""The key=value command lines of ablate-export and ablate-report."""

from __future__ import annotations

import sys
from typing import Callable

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


def command(doc: str, argv: list[str] | None, allowed: tuple[str, ...], body: Callable[[dict[str, str]], int],
            errors: tuple[type[Exception], ...] = (ConfigError,)) -> int:
    """Run `body` on the parsed arguments: the doc on -h or no argument, `error: ...` and exit 2 on
    the user's mistakes (`errors`), never a traceback for them."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a in ("-h", "--help") for a in argv):
        print(doc)
        return 0 if argv else 2
    try:
        return body(key_values(argv, allowed))
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
