"""Modules share only public names: no sbjax module imports a private (``_``) name of another."""

import ast
from pathlib import Path

import pytest

import sbjax

PACKAGE = Path(sbjax.__file__).parent
MODULES = sorted(p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py"))


def private_imports(path: Path) -> list[str]:
    """``module.name`` for each private name that ``path`` imports from an sbjax module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("sbjax")):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    return found


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_a_private_name_of_another(module):
    assert private_imports(PACKAGE.parent / module) == []
