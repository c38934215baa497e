"""The MQTT package's shape: no import cycles, a standard-library-only wire layer, small modules.

Imports are read from the source (every ``import`` statement, also under ``TYPE_CHECKING`` and
inside functions), so a cycle cannot hide behind a deferred import.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "protocols" / "mqtt"
PROTOCOLS = PACKAGE.parent
MAX_LINES = 800


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROTOCOLS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (``from . import x`` counts ``pkg.x`` too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_inside_protocols_mqtt():
    graph = _graph()
    assert "protocols.mqtt.client" in graph  # the scan found the package
    assert _cycles(graph) == []


def test_the_wire_layer_uses_only_the_standard_library():
    wire = list((PACKAGE / "wire").glob("*.py"))
    assert {p.stem for p in wire} >= {"codec", "packets", "connection"}
    for path in wire:
        outside = {
            m
            for m in _imports(path)
            if not m.startswith("protocols.mqtt.wire")
            and m.split(".")[0] not in sys.stdlib_module_names
        }
        assert outside == set(), path.name


def test_no_module_in_protocols_is_over_800_lines():
    long = {
        str(p.relative_to(PROTOCOLS)): n
        for p in PROTOCOLS.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
