"""Find the line of a key in TOML text, so configuration errors can name it.

``tomllib`` keeps no positions, so this walks the text once and records, for every table header
and ``key = value`` line, the path it defines (array-of-tables entries by index). A lookup takes
the longest recorded prefix of the wanted path. It is deliberately forgiving: for odd layouts it
still lands on the enclosing table, which is good enough to point a person at the problem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Path = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*(.+?)\s*\]\]?\s*(#.*)?$")
_KEY_LINE = re.compile(
    r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*="
)
_KEY_PART = re.compile(r"\s*(?:([A-Za-z0-9_-]+)|\"([^\"]*)\"|'([^']*)')\s*")


def _split_key(text: str) -> list[str]:
    parts: list[str] = []
    for piece in re.split(r"\.(?=(?:[^\"']|\"[^\"]*\"|'[^']*')*$)", text):
        found = _KEY_PART.fullmatch(piece)
        if not found:
            return [piece.strip()]
        parts.append(next(group for group in found.groups() if group is not None))
    return parts


class TomlLines:
    def __init__(self, text: str) -> None:
        self.lines: dict[Path, int] = {}
        array_counts: dict[Path, int] = {}
        current: Path = ()
        in_multiline = False
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline:
                if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                    in_multiline = False
                continue
            header = _HEADER.match(line)
            if header and not _KEY_LINE.match(line):
                keys = _split_key(header.group(2))
                is_array = header.group(1) == "[["
                current = self._resolve(keys, array_counts, is_array)
                self.lines.setdefault(current, number)
                continue
            key_line = _KEY_LINE.match(line)
            if key_line:
                path = current + tuple(_split_key(key_line.group(1)))
                self.lines.setdefault(path, number)
                if line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1:
                    in_multiline = True

    def _resolve(self, keys: list[str], array_counts: dict[Path, int], is_array: bool) -> Path:
        path: Path = ()
        for index, key in enumerate(keys):
            path = (*path, key)
            last = index == len(keys) - 1
            if last and is_array:
                array_counts[path] = array_counts.get(path, -1) + 1
                return (*path, array_counts[path])
            if path in array_counts:
                path = (*path, array_counts[path])
        return path

    def line_of(self, path: Sequence[str | int]) -> int | None:
        wanted = tuple(path)
        while True:
            if wanted in self.lines:
                return self.lines[wanted]
            if not wanted:
                return None
            wanted = wanted[:-1]
