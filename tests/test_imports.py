"""The import graph of the installed packages: no cycles, and plugin packages that keep to themselves.

Every import counts, at the top of a module or inside a function (a lazy
import runs too, only later): a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"core": "aigc_kit.core", "plugins": "aigc_kit.plugins", "exporters": "aigc_kit.exporters",
            "cli": "aigc_kit.cli", "testing": "aigc_kit.testing"}
SHARED_PLUGIN_MODULES = {"aigc_kit.plugins", "aigc_kit.plugins.common", "aigc_kit.plugins.drawing"}


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by its dotted name."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [part for part in path.relative_to(ROOT / folder).with_suffix("").parts if part != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules that module ``name`` imports: ``from package import submodule`` names the submodule
    (its package is imported on the way, as for any submodule, which is not a dependency of its own)."""
    targets = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            candidates = [[f"{base}.{alias.name}", base] for alias in node.names]
        else:
            continue
        for options in candidates:
            for candidate in options:
                while candidate and candidate not in known:  # a name inside a module: the module
                    candidate = candidate.rpartition(".")[0]
                if candidate:
                    if candidate != name:
                        targets.add(candidate)
                    break
    return targets


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    order, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in graph:
        if root in order:
            continue
        work = [(root, iter(sorted(graph[root])))]
        order[root] = low[root] = len(order)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in order:
                    order[successor] = low[successor] = len(order)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], order[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == order[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_the_walker_sees_imports_of_every_form(tmp_path):
    known = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py"), "p.c": Path("p/c.py")}
    assert cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p": set()}) == [["p.a", "p.b", "p.c"]]
    assert cycles({"p.a": {"p.b"}, "p.b": set(), "p.c": {"p.a", "p.b"}}) == []
    module = tmp_path / "a.py"
    module.write_text("from . import b\ndef f():\n    from .c import thing\n    import p\n")
    assert imported("p.a", module, known) == {"p.b", "p.c", "p"}


def test_no_module_imports_itself_back(graph):
    assert cycles(graph) == [], "import cycles (each: the modules that import each other, directly or not)"


def test_a_plugin_package_imports_only_the_core_its_own_modules_and_the_shared_ones(graph):
    strays = {}
    for name, targets in graph.items():
        if not name.startswith("aigc_kit.plugins."):
            continue
        own = ".".join(name.split(".")[:3])
        allowed = ("aigc_kit.core", own)
        bad = sorted(target for target in targets if target not in SHARED_PLUGIN_MODULES
                     and not any(target == prefix or target.startswith(prefix + ".") for prefix in allowed))
        if bad:
            strays[name] = bad
    assert strays == {}
