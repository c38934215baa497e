"""Find the line of a value in TOML text, so configuration errors can point at it.

``tomllib`` keeps no positions, so the text is parsed a second time with tree-sitter's TOML
grammar, which does: every table header, ``key = value`` pair, inline-table entry and array
element is recorded under the path ``tomllib`` gives it (array-of-tables entries and array
elements by index), at the line its value starts. A lookup takes the longest recorded prefix of
the wanted path, so a missing key still lands on its table's header.

A second parser, not a hand-written scanner: multi-line arrays, inline tables, dotted and quoted
keys and multi-line strings all need a real TOML grammar to place an element on its own line.
The text has already passed ``tomllib``, so the two parsers agree on its structure.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from functools import cache

import tree_sitter
import tree_sitter_toml

Path = tuple[str | int, ...]

_NOT_A_VALUE = frozenset({"comment", "ERROR"})


@cache
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_toml.language()))


def _named(node: tree_sitter.Node) -> list[tree_sitter.Node]:
    return [child for child in node.named_children if child.type not in _NOT_A_VALUE]


def _key_parts(node: tree_sitter.Node) -> list[str]:
    """The keys of a bare, quoted or dotted key node, unquoted as TOML defines."""
    if node.type == "dotted_key":
        return [part for child in _named(node) for part in _key_parts(child)]
    text = (node.text or b"").decode()
    if node.type == "quoted_key":
        # TOML's own unquoting (escapes, literal strings): ask tomllib rather than redo it.
        return [next(iter(tomllib.loads(f"{text} = 0")))]
    return [text]


def _line(node: tree_sitter.Node) -> int:
    return node.start_point.row + 1


class TomlLines:
    def __init__(self, text: str) -> None:
        self.lines: dict[Path, int] = {}
        self._array_counts: dict[Path, int] = {}
        tree = _parser().parse(text.encode())
        for node in _named(tree.root_node):
            if node.type in ("table", "table_array_element"):
                self._table(node)
            elif node.type == "pair":
                self._pair(node, ())

    def _record(self, path: Path, line: int) -> None:
        # Parents too (an implicit [a] of [a.b]): first mention wins, like the file reads.
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def _table(self, node: tree_sitter.Node) -> None:
        children = _named(node)
        if not children:
            return
        keys = _key_parts(children[0])
        path: Path = ()
        for index, key in enumerate(keys):
            path = (*path, key)
            if index == len(keys) - 1 and node.type == "table_array_element":
                count = self._array_counts.get(path, -1) + 1
                self._array_counts[path] = count
                path = (*path, count)
            elif path in self._array_counts:
                path = (*path, self._array_counts[path])
        self._record(path, _line(node))
        for child in children[1:]:
            if child.type == "pair":
                self._pair(child, path)

    def _pair(self, node: tree_sitter.Node, table: Path) -> None:
        children = _named(node)
        if len(children) < 2:
            return
        self._value(children[1], (*table, *_key_parts(children[0])))

    def _value(self, node: tree_sitter.Node, path: Path) -> None:
        self._record(path, _line(node))
        if node.type == "array":
            for index, element in enumerate(_named(node)):
                self._value(element, (*path, index))
        elif node.type == "inline_table":
            for child in _named(node):
                if child.type == "pair":
                    self._pair(child, path)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        wanted = tuple(path)
        while True:
            if wanted in self.lines:
                return self.lines[wanted]
            if not wanted:
                return None
            wanted = wanted[:-1]
