"""The package is layered: no import cycle, read statically (every import, deferred ones inside
functions too) and proven by importing each module on its own."""

import ast
import importlib
import os
import sys
import traceback
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


# the package's layers, from the bottom: a module imports only from its own layer or one below.
# The phases read upward in the order each builds on the one before: training evaluates as it goes,
# a plan checks every job as training and evaluation will, a report reads plans, runs and evaluations.
LAYERS = [
    ("foundation", ("ablate", "ablate.registry", "ablate.typed", "ablate.parts", "ablate.config", "ablate.naming",
                    "ablate.files", "ablate.signals", "ablate.stats", "ablate.ladder")),
    ("model and data", ("ablate.model", "ablate.data", "ablate.hf")),
    ("a run", ("ablate.run", "ablate.cli")),
    ("evaluate", ("ablate.evaluate",)),
    ("train", ("ablate.train",)),
    ("plan", ("ablate.plan", "hydra_plugins")),
    ("report", ("ablate.report",)),
    ("studies", ("ablate.tokenizer_study",)),
]


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a module's layer: its longest matching prefix (the package `ablate`
    itself matches only itself); None where no layer names it."""
    found = [(len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
             if module == p or (p != "ablate" and module.startswith(p + "."))]
    return max(found)[1] if found else None


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer to a higher one, as `module (layer) -> module (layer)`."""
    return [f"{m} ({LAYERS[layer_of(m)][0]}) -> {d} ({LAYERS[layer_of(d)][0]})" for m, deps in sorted(graph.items())
            for d in sorted(deps) if layer_of(d) > layer_of(m)]


def test_every_module_has_a_layer_and_imports_nothing_above_it():
    graph = import_graph()
    assert not [m for m in graph if layer_of(m) is None], "a module no layer names"
    assert upward(graph) == []
    # the check sees an upward import: a run's module reaching into training
    assert upward({"ablate.run.rundir": {"ablate.train.trackers"}, "ablate.train.trackers": set()}) == [
        "ablate.run.rundir (a run) -> ablate.train.trackers (train)"]


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    # the schema knows no registry (its checks of optional parts live in ablate.parts, which knows none either)
    assert graph["ablate.config"] <= {"ablate.registry", "ablate.typed", "ablate.parts"}, "config.py"
    assert graph["ablate.parts"] <= {"ablate.registry"}, "parts.py"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def _import_alone(name: str) -> str:
    """Import `name` in a forked child whose interpreter holds no module of the package (the
    third-party libraries stay loaded, so a fork costs little); '' if it imports, else the error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        code = 0
        try:
            # the package's modules, and lm-eval's, whose registry holds what the package registered
            for loaded in [m for m in sys.modules if m.split(".")[0] in (*PACKAGES, "lm_eval")]:
                del sys.modules[loaded]
            importlib.import_module(name)
        except BaseException:
            os.write(write, traceback.format_exc()[-1500:].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        error = pipe.read()
    _, status = os.waitpid(pid, 0)
    return error or ("" if os.waitstatus_to_exitcode(status) == 0 else f"exit status {status}")


def test_each_module_imports_on_its_own():
    """Each module imported first, alone, with no other module of the package loaded (a cycle held
    together by import order would fail here): each in a forked child of a parent that has loaded
    the third-party libraries (by importing every module once), so each child runs only the
    package's own imports."""
    for name in modules():  # every library any module needs, loaded once before the forks
        if not name.endswith("__main__"):
            importlib.import_module(name)
    failed = {name: error for name in modules() if (error := _import_alone(name))}
    assert not failed, failed


def test_a_module_that_needs_another_loaded_first_is_caught(tmp_path, monkeypatch):
    """The check fails on a module that only imports when something else was imported before it."""
    package = tmp_path / "ablate_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "needs.py").write_text("import sys\nassert 'ablate_probe_pkg.first' in sys.modules\n")
    (package / "first.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", (*PACKAGES, "ablate_probe_pkg"))
    importlib.import_module("ablate_probe_pkg.first")
    assert _import_alone("ablate_probe_pkg.first") == ""
    assert "AssertionError" in _import_alone("ablate_probe_pkg.needs")
