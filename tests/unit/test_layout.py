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


def test_the_checker_sees_a_forbidden_edge(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cli.common import fail\n    import bot.liquidator as b\n")
    assert imported_packages(module) == {"cli", "bot"}
