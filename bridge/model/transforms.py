"""A route's transformations as routing.toml declares them, compiled once at start-up.

``[routes.transform]``::

    version = "1.0.0"                          # written in every record's lineage headers
    source_schema = "schemas/oddsco-price.json"  # the sender's shape, checked before
    inbound = '''{"match": params.fixture, "home": 100.0 / body.home_pct}'''

    [[routes.transform.outbound]]              # what one audience sees of a record
    roles = ["anonymous"]
    remove = ["/device"]
    mask = ["/operator"]
    expression = '''...'''                     # optional: a new value built from the record

Expressions are CEL (the Common Expression Language, through ``common-expression-language``:
Rust bindings; docs/decisions.md says why). What an expression may read is :data:`VARIABLES`;
one that names anything else, or does not parse, is a problem at its line in routing.toml.
Applying them to records is :mod:`bridge.edge.transform`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cel

#: What an expression reads. ``body``: the parsed JSON payload (inbound: the sender's; outbound:
#: the record's); ``key``: the record's key as text (null if it has none, or inbound, when the
#: key is built from the body); ``headers``: the record's headers (inbound: the protocol's own,
#: MQTT user properties or HTTP request headers), last value per name, as text; ``params``: the
#: address parameters; ``identity``: the caller's principal (null: anonymous); ``claims``: the
#: caller's token claims; ``roles``: the caller's roles; ``region``: the caller's region.
VARIABLES = ("body", "key", "headers", "params", "identity", "claims", "roles", "region")

_POSITION = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")
# CEL string and bytes literals (quotes of either kind, triple or single, escapes), and comments:
# taken out before looking for how ``body`` is used.
_LITERALS = re.compile(
    r"[rRbB]*('{3}|\"{3})(?:\\.|(?!\1).)*?\1"  # triple-quoted
    r"|[rRbB]*(['\"])(?:\\.|(?!\2).)*?\2"  # quoted
    r"|//[^\n]*",  # a comment
    re.S,
)
_BODY = re.compile(r"(?<![\w.])body\b(\s*\.\s*([A-Za-z_]\w*))?")


class ExpressionError(ValueError):
    """An expression that cannot be used: ``line`` is its line within the expression (1-based)."""

    def __init__(self, message: str, line: int = 1) -> None:
        self.line = line
        super().__init__(message)


@dataclass(frozen=True, slots=True, eq=False)
class Expression:
    """One compiled CEL expression and the variables it reads."""

    source: str
    program: cel.Program
    reads: frozenset[str]
    # The top-level fields of ``body`` the expression reads, when it only ever reads
    # ``body.<field>`` (None: it reads ``body`` some other way, as a whole). Handing CEL only
    # those is what a record costs: each value converted is ~1-2 µs.
    body_fields: frozenset[str] | None = None

    @classmethod
    def compile(cls, source: str) -> Expression:
        """Raises :class:`ExpressionError` with the line and column of the first problem."""
        if not source.strip():
            raise ExpressionError("the expression is empty")
        try:
            program = cel.compile(source)
        except ValueError as exc:
            found = _POSITION.search(str(exc))
            if found is None:
                raise ExpressionError(str(exc).splitlines()[0]) from None
            line, column, what = int(found[1]), int(found[2]), found[3]
            what = what.split(" expecting {", 1)[0]  # the parser's token list helps nobody
            raise ExpressionError(f"column {column}: {what}", line) from None
        reads = frozenset(program.variables())
        unknown = sorted(reads - set(VARIABLES))
        if unknown:
            # The first line that names it, so the problem points at the word.
            name = unknown[0]
            line = next(
                (
                    n
                    for n, text in enumerate(source.splitlines(), 1)
                    if re.search(rf"(?<![\w.]){re.escape(name)}\b", text)
                ),
                1,
            )
            raise ExpressionError(
                f"unknown variable {name!r}: an expression reads {', '.join(VARIABLES)}", line
            )
        return cls(source, program, reads, _body_fields(source) if "body" in reads else None)


@dataclass(frozen=True, slots=True, eq=False)
class Projection:
    """What one audience of a route sees of its records (``[[routes.transform.outbound]]``)."""

    roles: frozenset[str]  # the first projection naming one of a subscriber's roles is its view
    expression: Expression | None = None  # a new value from the record, before remove/mask
    remove: tuple[tuple[str, ...], ...] = ()  # JSON pointers, split into their tokens
    mask: tuple[tuple[str, ...], ...] = ()
    index: int = 0  # its place in the route's list: the metric's and the log's label


@dataclass(frozen=True, slots=True, eq=False)
class Transform:
    """A route's ``[routes.transform]``."""

    version: str | None = None
    inbound: Expression | None = None
    source_schema_path: Path | None = None
    source_schema: Mapping[str, Any] | None = None
    outbound: tuple[Projection, ...] = ()


def _body_fields(source: str) -> frozenset[str] | None:
    """The fields read as ``body.<field>``, or None if ``body`` is also read another way."""
    fields = set()
    for found in _BODY.finditer(_LITERALS.sub(" ", source)):
        if found[2] is None:
            return None
        fields.add(found[2])
    return frozenset(fields)


def pointer_tokens(pointer: str) -> tuple[str, ...]:
    """``/a/b~1c`` -> ("a", "b/c") (RFC 6901). Raises ValueError for a pointer without its '/'."""
    if not pointer.startswith("/") or pointer == "/":
        raise ValueError(f"{pointer!r} is not a JSON pointer to a field (like /user/name)")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))
