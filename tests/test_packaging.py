"""The package's contracts with its installers and its own layers: every third-party import is
declared in pyproject.toml, and no module imports from a phase above its own."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """The absolute imports of a module, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return {re.split(r"[<>=!~\[ ;]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def test_every_third_party_import_is_declared():
    owners = packages_distributions()
    modules = [*(ROOT / "ablate").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]
    top = {name.split(".")[0] for path in modules for name in imports(path)}
    third = sorted(t for t in top if t not in sys.stdlib_module_names and t not in ("ablate", "hydra_plugins"))
    assert "scipy" in third and "yaml" in third  # the walk sees the imports
    missing = {t: owners.get(t, [t]) for t in third
               if not any(d.lower().replace("_", "-") in declared() for d in owners.get(t, [t]))}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
