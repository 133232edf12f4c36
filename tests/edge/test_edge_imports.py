"""The edge's import rules: no module of `zuulpush.edge` imports one that imports it (counting
every import statement, `TYPE_CHECKING` ones too), and the edge loads nothing of aiohttp or
Redis. Read from the source (`ast`) and from a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

EDGE = Path(__file__).resolve().parents[2] / "zuulpush" / "edge"
PACKAGE = "zuulpush.edge"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The edge modules `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found.update(name for name in names if name in modules)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {f"{PACKAGE}.{path.stem}": path for path in EDGE.glob("*.py")
             if path.stem != "__init__"}
    return {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path of imports from `start` back to it, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for imported in graph[module]:
            if imported == start:
                return [*path, start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, [*path, imported]))
    return None


def test_no_module_of_the_edge_imports_one_that_imports_it() -> None:
    graph = _graph()
    assert f"{PACKAGE}.server" in graph and f"{PACKAGE}.protocol" in graph
    cycles = [cycle for name in graph if (cycle := _cycle_from(graph, name))]
    assert cycles == []


def test_the_connection_and_the_admin_routes_do_not_import_the_node() -> None:
    graph = _graph()
    for module in ("protocol", "host", "state", "admin"):
        assert f"{PACKAGE}.server" not in graph[f"{PACKAGE}.{module}"], module


def test_the_edge_loads_nothing_of_aiohttp_or_redis() -> None:
    modules = ", ".join(f"{PACKAGE}.{path.stem}" for path in sorted(EDGE.glob("*.py"))
                        if path.stem != "__init__")
    code = (f"import sys, {modules}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'redis'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=EDGE.parents[1])
    assert done.stdout.strip() == "[]"
