"""Layering: the sbjax modules import each other without cycles and use only each other's public names.

The import graph is read with ``ast`` from every ``sbjax/**/*.py``: module-level and
function-level imports alike (an import inside a function is still a dependency), except those
under ``if TYPE_CHECKING:``. ``tests/test_imports.py`` checks ``from sbjax.x import _name``; this
file checks the cycles and ``x._name`` through an imported module.
"""

import ast
import subprocess
import sys
from pathlib import Path

import sbjax

PACKAGE = Path(sbjax.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _absolute(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str) -> tuple[set[str], dict[str, str]]:
    """The sbjax modules ``name`` imports, and its local names bound to sbjax modules."""
    found, aliases = set(), {}
    for node in _runtime_nodes(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    found.add(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, node)
            for a in node.names:
                if f"{base}.{a.name}" in MODULES:
                    found.add(f"{base}.{a.name}")
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
                elif base in MODULES:
                    found.add(base)
    found.discard(name)
    return found, aliases


GRAPH = {name: imports(name)[0] for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search, as the path that closes it."""
    state, path, out = {}, [], []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                out.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return out


def test_the_graph_is_read_from_imports():
    assert "sbjax.checkpoints" in GRAPH["sbjax.evaluate"]  # function-level
    assert "sbjax.setups" in GRAPH["sbjax.experiment"] and "sbjax.config" in GRAPH["sbjax.setups"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_among_sbjax_modules():
    assert cycles(GRAPH) == []


def test_no_module_reaches_into_another_modules_private_names():
    found = []
    for name in MODULES:
        aliases = imports(name)[1]
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):  # fmt: skip
                found.append(f"{name}: {aliases[node.value.id]}.{node.attr}")
    assert found == []


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run([sys.executable, "-c", code, *MODULES], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
