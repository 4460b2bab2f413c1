"""The package's module graph: no import cycles, no imports hidden in functions.

Operator queries are single-dispatch functions that each operator module registers for its
own classes (`linsolve/_operator.py`), so no module needs to import one that imports it
back. These tests keep it that way: a cycle, or a function-local import that dodges one,
fails here with the modules named.
"""

import ast
import pathlib
import subprocess
import sys

import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent / "linsolve"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = sorted(_module_name(p) for p in ROOT.rglob("*.py"))


def _package_of(path: pathlib.Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _targets(node: ast.ImportFrom | ast.Import, path: pathlib.Path) -> list[str]:
    """The linsolve modules an import statement imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "linsolve"]
    if node.level:
        base = _package_of(path).split(".")
        base = base[: len(base) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    if module.split(".")[0] != "linsolve":
        return []
    # `from . import rcond` imports the submodule `rcond`.
    subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES]
    return subs or [module]


def _imports(path: pathlib.Path) -> tuple[set[str], list[str]]:
    """(linsolve modules imported at module level, function-local linsolve imports)."""
    tree = ast.parse(path.read_text())
    top, local = set(), []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update(_targets(node, path))
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and _targets(node, path):
                    local.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    return top, local


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        if name == "linsolve":
            continue  # the package re-exports everything: its edges are not a design
        top, _ = _imports(path)
        # A module importing a sibling also runs the parent package's __init__; the
        # package "linsolve" itself is excluded above.
        graph[name] = {t for t in top if t != "linsolve" and t != name}
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_function_local_imports_of_linsolve_modules():
    local = [hit for path in ROOT.rglob("*.py") for hit in _imports(path)[1]]
    assert not local, f"function-local imports of linsolve modules: {local}"


def test_every_module_imports_alone():
    # One fresh interpreter; before each module, every linsolve module is forgotten, so
    # each import starts from nothing linsolve-owned (jax stays loaded: it is not ours).
    script = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    for m in [m for m in sys.modules if m == 'linsolve' or m.startswith('linsolve.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT.parent,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def test_the_graph_is_seen():
    # The checks above are only as good as the parser: the known edges must be found.
    graph = _graph()
    assert "linsolve._operator" in graph["linsolve._solve"]
    assert "linsolve._solver.rcond" in graph["linsolve._solver.cholesky"]
    assert "linsolve._lapack" in graph["linsolve._solver.cholesky"]
