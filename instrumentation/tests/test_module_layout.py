"""The instrumentation's modules import each other without cycles (function-level imports
included), so that each one can be read, and loaded in a fresh child process, on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import tasktree.instrumentation as package

ROOT = Path(package.__file__).parent
PACKAGE = package.__name__


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


MODULES = {_module_name(path): path for path in ROOT.rglob("*.py")}


def _imports(name: str) -> set[str]:
    """The package's modules ``name`` imports, anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else _resolve(name, node)
            found |= {f"{base}.{alias.name}" for alias in node.names} | {base}
    own = {module for module in found if module in MODULES}
    # "from tasktree.instrumentation import x" names the module x, not the package's __init__.
    if PACKAGE in own and name != PACKAGE and not any(
        isinstance(node, ast.Import) and any(a.name == PACKAGE for a in node.names)
        for node in ast.walk(ast.parse(MODULES[name].read_text()))
    ):
        own.discard(PACKAGE)
    return own - {name}


def _resolve(name: str, node: ast.ImportFrom) -> str:
    parts = name.split(".")
    if not MODULES[name].name == "__init__.py":
        parts = parts[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    path, seen = [start], set()

    def visit(module: str) -> list[str] | None:
        for target in sorted(graph[module]):
            if target == start:
                return [*path, start]
            if target in seen or target in path:
                continue
            path.append(target)
            found = visit(target)
            if found:
                return found
            path.pop()
            seen.add(target)
        return None

    return visit(start)


def test_no_module_of_the_instrumentation_imports_one_that_imports_it_back():
    graph = {name: _imports(name) for name in MODULES}
    # Every module loads the package's __init__ first: that edge is not a choice of the module.
    cycles = [cycle for name in MODULES if name != PACKAGE and (cycle := _cycle_from(name, graph))]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_function_level_imports():
    assert "tasktree.instrumentation.configuration" in _imports(
        "tasktree.instrumentation.integrations.celery"
    )
