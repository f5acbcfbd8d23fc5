"""The arrows point down: layers never import the recipes above them, and no two modules import each other.

Layers, top to bottom: recipes (train then evaluate) > sweeps > eval > training > pruned_vlm/pruners/selector/
backbones/data. A module-level import (type-only ones included) from one module to another is an edge; the
test fails on any cycle of modules and on any import of `steprune.recipes` from below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "steprune"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if not module_level_only else _module_level(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("steprune"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("steprune")}
    return found


def _module_level(tree: ast.Module):
    for node in tree.body:
        yield node
        if isinstance(node, ast.If | ast.Try):  # `if TYPE_CHECKING:` and guarded imports count too
            yield from ast.walk(node)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_nothing_below_the_recipes_imports_them():
    offenders = {
        name: sorted(i for i in imports(path, module_level_only=False) if i.startswith("steprune.recipes"))
        for name, path in MODULES.items()
        if not name.startswith("steprune.recipes") and name not in {"steprune.cli"}  # the CLI dispatches by name
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_no_two_modules_import_each_other():
    edges = {
        name: {i for i in imports(path, module_level_only=True) if i in MODULES and i != name and "." in i}
        for name, path in MODULES.items()
    }
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    cycles = [
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if a in edges.get(b, set()) and a < b and not ({a, b} & packages)
    ]
    assert not cycles, f"modules importing each other: {cycles}"
