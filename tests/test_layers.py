"""The package is layered: no import cycle, read statically (every import, deferred ones inside
functions too) and proven by importing each module on its own."""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import ROOT

PACKAGES = ("ablate", "hydra_plugins")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def _executed(tree: ast.AST):
    """The nodes of `tree` that can run: what sits under `if TYPE_CHECKING:` never does."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_executed(child)])
            continue
        yield node
        yield from _executed(node)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level or inside functions."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in _executed(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from ablate import checkpoint` names a module; `from ablate.model import X` a package
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                           for a in node.names]
            graph[name] |= {t for t in targets if t in known and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert graph["ablate.config"] <= {"ablate.registry"}, "config.py is a leaf: the schema knows no registry"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_each_module_imports_on_its_own():
    """Each module imported first, alone, in a fresh interpreter (a cycle held together by import
    order would fail here)."""
    def load(name: str) -> tuple[str, subprocess.CompletedProcess]:
        return name, subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True,
                                    text=True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = {name: proc.stderr[-1500:] for name, proc in pool.map(load, modules()) if proc.returncode}
    assert not failed, failed
