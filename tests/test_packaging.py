"""The package's contracts with its installers and its own layers: every third-party import (of the
package, its benchmarks and its tests) is declared in pyproject.toml, and no module imports from a
phase above its own."""

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
    modules = [path for d in ("ablate", "hydra_plugins", "bench", "tests") for path in (ROOT / d).rglob("*.py")]
    top = {name.split(".")[0] for path in modules for name in imports(path)}
    ours = ("ablate", "hydra_plugins", "conftest")  # and the tests' own modules, test_*
    third = sorted(t for t in top if t not in sys.stdlib_module_names and t not in ours and not t.startswith("test_"))
    assert "scipy" in third and "yaml" in third  # the walk sees the imports
    missing = {t: owners.get(t, [t]) for t in third
               if not any(d.lower().replace("_", "-") in declared() for d in owners.get(t, [t]))}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_module_says_what_it_owns_and_every_folder_is_a_package():
    """A module's docstring says what it owns; every folder of the package is a regular package, so
    an installed wheel holds all of it (setuptools finds only folders with an __init__.py)."""
    from setuptools import find_packages

    modules = sorted((ROOT / "ablate").rglob("*.py"))
    bare = [str(p.relative_to(ROOT)) for p in modules if len(ast.get_docstring(ast.parse(p.read_text())) or "") < 40]
    assert not bare, f"modules without a docstring: {bare}"
    folders = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in modules}
    assert folders <= set(find_packages(str(ROOT), include=["ablate*"])), folders - set(find_packages(str(ROOT)))


def test_no_module_too_long_and_no_function_too_branched():
    """At most 600 lines a module, and no function above cyclomatic complexity 20 (radon's grade
    C): a function past that is split where it reads as two jobs."""
    from radon.complexity import cc_visit

    modules = sorted((ROOT / "ablate").rglob("*.py"))
    long = {str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
    branched = {f"{p.relative_to(ROOT)}:{b.fullname}": b.complexity for p in modules
                for b in cc_visit(p.read_text()) if b.complexity > 20}
    assert not branched, branched
    assert max(b.complexity for p in modules for b in cc_visit(p.read_text())) > 10  # radon reads them
