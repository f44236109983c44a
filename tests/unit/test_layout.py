"""The package map of the README's architecture section, enforced: dependencies flow one way.

contracts -> protocol_model -> bot -> simulator -> cli; devnode imports none of the project's
packages (simulator and cli may import it). Every import statement of every module is read with
``ast`` (function-level imports included), so a late ``import`` inside a function cannot hide an
edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "protocol_model", "bot", "devnode", "simulator", "cli")
ALLOWED: dict[str, set[str]] = {
    "contracts": set(),
    "protocol_model": {"contracts"},
    "bot": {"contracts", "protocol_model"},
    "devnode": set(),
    "simulator": {"contracts", "protocol_model", "bot", "devnode"},
    "cli": {"contracts", "protocol_model", "bot", "devnode", "simulator"},
}


def imported_packages(path: Path) -> set[str]:
    """The project packages that the module at ``path`` imports (absolute imports only: a
    relative import stays inside its own package by construction)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found


def test_every_package_is_mapped() -> None:
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench", "docs"}
    assert on_disk == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_flow_one_way(package: str) -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(deps - ALLOWED[package] - {package})
        for path in sorted((ROOT / package).rglob("*.py"))
        if (deps := imported_packages(path)) - ALLOWED[package] - {package}
    }
    assert offending == {}


def module_imports(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (``__init__`` modules left out: a
    package's ``__init__`` re-exports, and its modules may import the package's root object)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p
               for p in (ROOT / package).rglob("*.py") if p.name != "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1]) if node.level else ""
                module = ".".join(x for x in (base, node.module or "") if x)
                deps.update(m for m in (module, *(f"{module}.{a.name}" for a in node.names)) if m in modules)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES[1:])
def test_no_import_cycle_inside_a_package(package: str) -> None:
    """E.g. protocol_model.loader imports protocol_model.logs, never the other way round as well."""
    assert find_cycle(module_imports(package)) is None


def test_the_cycle_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_checker_sees_a_forbidden_edge(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cli.common import fail\n    import bot.liquidator as b\n")
    assert imported_packages(module) == {"cli", "bot"}
