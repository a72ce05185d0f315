"""The test suite's own rule: no test module imports another test module.

Shared helpers live in support modules (``*_support.py``, ``spans.py``, ...) and shared fixtures
in conftest.py files.  Importing a test module instead runs its import-time code twice under two
names, re-collects nothing but shadows fixtures (ruff F811), and ties one test file's helpers to
another's refactoring.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FOLDERS = ("exporter/tests", "instrumentation/tests", "tests")


def python_files() -> list[Path]:
    files = []
    for folder in TEST_FOLDERS:
        files += [p for p in (ROOT / folder).rglob("*.py") if "node_modules" not in p.parts]
    return files


def imported_modules(tree: ast.AST) -> list[str]:
    """Every module an ``import`` or ``from ... import`` names, dotted, relative ones included
    (``from . import test_x`` gives ``.test_x``)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.append(base)
            if not node.module:
                names += [base + alias.name for alias in node.names]
    return names


def names_a_test_module(module: str) -> bool:
    return any(part.startswith("test_") for part in module.split("."))


def imported_test_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [name for name in imported_modules(tree) if names_a_test_module(name)]


def test_no_test_module_imports_another_test_module():
    found = {
        str(path.relative_to(ROOT)): names
        for path in python_files()
        if (names := imported_test_modules(path))
    }
    assert found == {}, f"move these helpers into a *_support.py module or a fixture: {found}"


def test_the_check_sees_every_form_of_import():
    forms = (
        "from test_fold import tree\n"
        "from .test_fold import run\n"
        "from ..ui.test_live import RedisServer\n"
        "import test_fold\n"
        "from . import test_fold\n"
        "from .fold_support import tree\n"
        "import tasktree.instrumentation.testing\n"
    )
    assert [name for name in imported_modules(ast.parse(forms)) if names_a_test_module(name)] == [
        "test_fold",
        ".test_fold",
        "..ui.test_live",
        "test_fold",
        ".test_fold",
    ]
