"""Value templates: how a Kafka key or header value is built from a request, and read back.

A value template is text with ``{placeholders}``. A plain ``{name}`` is an address parameter;
``{$...}`` names something about the request rather than its address:

``{$topic}``           the concrete protocol address (MQTT topic, request path)
``{$identity}``        the authenticated principal
``{$client_id}``       the protocol client id (MQTT client identifier)
``{$idempotency_key}`` the HTTP ``Idempotency-Key``
``{$body.a.b}``        a field of a JSON body

Templates made only of address parameters and literals can be *parsed* back from a record, which
is how a Kafka record finds its concrete MQTT topic or SSE path again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{(\$?[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)\}")
# ``$key``: the key of the record a route republishes (``[routes.kafka]``).
SOURCES = ("$topic", "$identity", "$client_id", "$idempotency_key", "$correlation_id", "$key")

Resolver = Callable[[str], str | None]


class ValueTemplateError(ValueError):
    """A value template that cannot be compiled."""


@dataclass(frozen=True, slots=True)
class ValueTemplate:
    source: str
    pieces: tuple[tuple[bool, str], ...]  # (is_placeholder, text)
    pattern: re.Pattern[str] | None  # for parse(); None if not parseable

    @classmethod
    def compile(cls, source: str) -> ValueTemplate:
        pieces: list[tuple[bool, str]] = []
        position = 0
        for found in _PLACEHOLDER.finditer(source):
            if found.start() > position:
                pieces.append((False, source[position : found.start()]))
            name = found.group(1)
            if name.startswith("$") and name not in SOURCES and not name.startswith("$body."):
                known = ", ".join(f"{{{s}}}" for s in (*SOURCES, "$body.field"))
                raise ValueTemplateError(f"unknown source {{{name}}}; known: {known}")
            pieces.append((True, name))
            position = found.end()
        if position < len(source):
            pieces.append((False, source[position:]))
        leftover = "".join(text for is_ph, text in pieces if not is_ph)
        if "{" in leftover or "}" in leftover:
            raise ValueTemplateError(f"malformed placeholder in {source!r}")
        return cls(source, tuple(pieces), _parse_pattern(pieces))

    @property
    def parameters(self) -> tuple[str, ...]:
        """Address parameters used (placeholders without ``$``)."""
        return tuple(text for is_ph, text in self.pieces if is_ph and not text.startswith("$"))

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(text for is_ph, text in self.pieces if is_ph and text.startswith("$"))

    def render(self, params: Mapping[str, str], resolve: Resolver | None = None) -> str | None:
        """The value, or None when a placeholder has no value."""
        out: list[str] = []
        for is_placeholder, text in self.pieces:
            if not is_placeholder:
                out.append(text)
                continue
            value = resolve(text) if text.startswith("$") and resolve else params.get(text)
            if value is None:
                return None
            out.append(value)
        return "".join(out)

    def parse(self, value: str) -> dict[str, str] | None:
        """Address parameters recovered from a rendered value (None if it does not fit)."""
        if self.pattern is None:
            return None
        found = self.pattern.fullmatch(value)
        return dict(found.groupdict()) if found else None


def _parse_pattern(pieces: list[tuple[bool, str]]) -> re.Pattern[str] | None:
    parts: list[str] = []
    seen: set[str] = set()
    for is_placeholder, text in pieces:
        if not is_placeholder:
            parts.append(re.escape(text))
        elif text.startswith("$"):
            return None
        elif text in seen:
            parts.append(f"(?P={text})")
        else:
            seen.add(text)
            parts.append(f"(?P<{text}>.+?)" if len(pieces) > 1 else f"(?P<{text}>.+)")
    return re.compile("".join(parts), re.DOTALL)
