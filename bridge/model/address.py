"""Address templates: how a protocol address (an MQTT topic, an SSE or HTTP path) names a route.

A template is a ``/``-separated list of levels, each one of:

* a literal (``stadium``) that must appear as is;
* ``{name}``: a named parameter matching exactly one non-empty level (like MQTT ``+``);
* ``{name...}``: a named parameter, last level only, matching one or more levels (like ``#``,
  but never the empty remainder); its value is the levels joined with ``/``.

Routing needs both directions: a concrete address is *matched* against a template (publish,
HTTP request), a subscription filter is *intersected* with it (does any topic match both?), and
parameters recovered from a Kafka record are *rendered* back into the concrete address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bridge.model.topic_filter import MULTI, SEPARATOR, SINGLE

LevelKind = Literal["literal", "param", "rest"]
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}$")
_SPECIFICITY = {"literal": 2, "param": 1, "rest": 0}


class TemplateError(ValueError):
    """A template that cannot be compiled."""


@dataclass(frozen=True, slots=True)
class Level:
    kind: LevelKind
    text: str  # the literal text, or the parameter name


@dataclass(frozen=True, slots=True)
class AddressTemplate:
    source: str
    levels: tuple[Level, ...]

    @classmethod
    def compile(cls, source: str) -> AddressTemplate:
        if not source:
            raise TemplateError("template is empty")
        levels: list[Level] = []
        raw_levels = source.split(SEPARATOR)
        seen: set[str] = set()
        for index, raw in enumerate(raw_levels):
            found = _PARAM.match(raw)
            if found:
                name, rest = found.group(1), found.group(2)
                if name in seen:
                    raise TemplateError(f"parameter {{{name}}} appears twice")
                seen.add(name)
                if rest and index != len(raw_levels) - 1:
                    raise TemplateError(f"{{{name}...}} must be the last level")
                levels.append(Level("rest" if rest else "param", name))
            elif "{" in raw or "}" in raw:
                raise TemplateError(
                    f"level {raw!r}: a parameter must be a whole level, like {{name}}"
                )
            elif SINGLE in raw or MULTI in raw:
                raise TemplateError(f"level {raw!r}: use {{name}} / {{name...}}, not + or #")
            else:
                levels.append(Level("literal", raw))
        return cls(source, tuple(levels))

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(level.text for level in self.levels if level.kind != "literal")

    @property
    def shape(self) -> tuple[tuple[str, str], ...]:
        """The levels with parameter names left out: two templates of one shape match exactly
        the same addresses (``/odds/{match}`` and ``/odds/{id}``)."""
        return tuple(
            (level.kind, level.text if level.kind == "literal" else "") for level in self.levels
        )

    @property
    def specificity(self) -> tuple[int, ...]:
        """Greater is more specific; used so that specific routes win over catch-alls."""
        return tuple(_SPECIFICITY[level.kind] for level in self.levels)

    def match(self, address: str) -> dict[str, str] | None:
        """Parameters if the concrete ``address`` matches, else None."""
        parts = address.split(SEPARATOR)
        params: dict[str, str] = {}
        for index, level in enumerate(self.levels):
            if level.kind == "rest":
                rest = parts[index:]
                if not rest or rest == [""]:
                    return None
                params[level.text] = SEPARATOR.join(rest)
                return params
            if index >= len(parts):
                return None
            part = parts[index]
            if level.kind == "literal":
                if part != level.text:
                    return None
            else:
                if not part:
                    return None
                params[level.text] = part
        return params if len(parts) == len(self.levels) else None

    def render(self, params: dict[str, str]) -> str | None:
        """The concrete address for ``params``; None if a value cannot stand in its level."""
        out: list[str] = []
        for level in self.levels:
            if level.kind == "literal":
                out.append(level.text)
                continue
            value = params.get(level.text)
            if not value:
                return None
            if level.kind == "param" and SEPARATOR in value:
                return None
            if SINGLE in value or MULTI in value:
                return None
            out.append(value)
        return SEPARATOR.join(out)

    def intersects(self, topic_filter: str) -> bool:
        """Could some topic name match both this template and the MQTT ``topic_filter``?"""
        filter_levels = topic_filter.split(SEPARATOR)
        if filter_levels[0] in (SINGLE, MULTI):
            first = self.levels[0]
            if first.kind == "literal" and first.text.startswith("$"):
                return False
        return _intersects(filter_levels, self.levels)


def _intersects(filter_levels: list[str], levels: tuple[Level, ...]) -> bool:
    for index, level in enumerate(levels):
        if index >= len(filter_levels):
            return False  # the template needs more levels than the filter allows
        wanted = filter_levels[index]
        if wanted == MULTI:
            return True
        if level.kind == "rest":
            # The rest takes a non-empty string: every run of filter levels can give one
            # except a single empty level ("a/" against "a/{rest...}").
            return filter_levels[index:] != [""]
        if wanted == SINGLE:
            continue
        if level.kind == "literal" and wanted != level.text:
            return False
        if level.kind == "param" and not wanted:
            return False
    rest = filter_levels[len(levels) :]
    return not rest or rest == [MULTI]
