"""The HTTP listener's dispatch table: which front-end answers a request, decided in one place.

Front-ends register what they answer (:meth:`DispatchTable.add`): an owner's name, a path
template in the route table's syntax (``/matches/{match}/scores``, ``/_edgebridge/replies/
{rest...}``, :mod:`bridge.model.address`), the methods, and optionally the media type the
entry stands for when two share a path and a method (an SSE stream and an HTTP fetch of the
same resource: the request's ``Accept`` decides). Sans-io: no sockets, no ASGI; the listener
asks :meth:`DispatchTable.resolve` per request.

Rules:

* **Conflicts are a start-up error.** Two entries of the same shape (the same literal levels,
  parameters in the same places, whatever their names) with a method in common and the same
  media type could both answer one request: :class:`RouteConflict` names both owners.
* **Precedence.** Among the entries whose template matches the path and that take the method,
  the most specific template wins (literal level > ``{param}`` > ``{rest...}``, level by level,
  as in the route table); among equally specific ones, the one whose media type the request
  accepts, else the one without a media type. ``HEAD`` is taken by an entry that takes ``GET``.
* **404 and 405.** A path no entry matches is not the table's (the listener's pages answer it,
  or 404); a path some entries match but none with the method is 405, with ``Allow`` listing
  every method the path's entries take (alphabetically, OPTIONS last).

A WebSocket handshake is the method ``WEBSOCKET`` (ASGI's scope type ``websocket``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.model.address import AddressTemplate, TemplateError

WEBSOCKET = "WEBSOCKET"
RESOLVED_MAX = 4096  # resolutions remembered (paths with parameters are many: then forgotten)


class RouteConflict(Exception):
    """Two registrations could answer the same request."""


@dataclass(frozen=True, slots=True)
class Entry:
    owner: str  # who registered it, as an operator reads it: "route odds (sse)", "page /docs"
    template: AddressTemplate
    methods: tuple[str, ...]
    handler: Any  # an ASGI app
    media: str | None = None
    direct: Any = None  # a bridge.web.direct.DirectHandler tried first, or None

    @property
    def size(self) -> int:
        return len(self.template.levels)

    @property
    def open_ended(self) -> bool:  # ends in {rest...}: matches longer paths too
        return self.template.levels[-1].kind == "rest"

    def takes(self, method: str) -> bool:
        return method in self.methods or (method == "HEAD" and "GET" in self.methods)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The entry that answers, or (``entry`` None) the methods the path allows: a 405."""

    entry: Entry | None
    allow: tuple[str, ...] = ()


class DispatchTable:
    def __init__(self) -> None:
        self._entries: list[Entry] = []
        # (method, path) -> its resolution, when the request's headers did not decide it: a
        # bet's POST /bets resolves the same every time (~4 us of template matching saved).
        self._resolved: dict[tuple[str, str], Resolution | None] = {}

    def __iter__(self) -> Iterable[Entry]:
        return iter(self._entries)

    def add(
        self,
        owner: str,
        path: str,
        methods: Sequence[str],
        handler: Any,
        media: str | None = None,
        direct: Any = None,
    ) -> Entry:
        if not path.startswith("/"):
            raise RouteConflict(f"{owner}: path {path!r} must start with /")
        try:
            template = AddressTemplate.compile(path)
        except TemplateError as exc:
            raise RouteConflict(f"{owner}: path {path!r}: {exc}") from exc
        entry = Entry(
            owner,
            template,
            tuple(dict.fromkeys(m.upper() for m in methods)),
            handler,
            media,
            direct,
        )
        shape = template.shape
        for other in self._entries:
            if other.media != media or other.template.shape != shape:
                continue
            shared = [m for m in entry.methods if m in other.methods]
            if shared:
                same = "" if other.template.source == path else f" (as {other.template.source})"
                raise RouteConflict(
                    f"{path}: {owner} and {other.owner}{same} both answer {', '.join(shared)}"
                    + (f" for {media}" if media else "")
                    + "; change one of the paths"
                )
        self._entries.append(entry)
        self._resolved.clear()
        return entry

    def resolve(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> Resolution | None:
        """Who answers ``method path``; None when no entry knows the path."""
        which = (method, path)
        try:
            return self._resolved[which]
        except KeyError:
            pass
        found, by_headers = self._resolve(method, path, headers)
        if not by_headers:
            if len(self._resolved) >= RESOLVED_MAX:
                self._resolved.clear()
            self._resolved[which] = found
        return found

    def _resolve(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[Resolution | None, bool]:
        """The resolution, and whether the request's headers decided it (``Accept``)."""
        levels = path.count("/") + 1  # a cheap filter first: most entries differ in length
        known = [
            e
            for e in self._entries
            if (len(e.template.levels) == levels or (e.open_ended and levels >= e.size))
            and e.template.match(path) is not None
        ]
        if not known:
            return None, False
        taking = [e for e in known if e.takes(method)]
        if not taking:
            methods = {m for e in known for m in e.methods if m != WEBSOCKET}
            options = ("OPTIONS",) if "OPTIONS" in methods else ()
            allow = (*sorted(methods - {"OPTIONS"}), *options)
            # A WebSocket-only path asked with plain HTTP: not a method question, a 404.
            return (Resolution(None, allow) if allow else None), False
        if len(taking) == 1:
            return Resolution(taking[0]), False
        best = max(e.template.specificity for e in taking)
        taking = [e for e in taking if e.template.specificity == best]
        if len(taking) > 1:
            accept = next((v for k, v in headers if k == b"accept"), b"")
            for entry in taking:
                if entry.media is not None and entry.media.encode() in accept:
                    return Resolution(entry), True
            for entry in taking:
                if entry.media is None:
                    return Resolution(entry), True
        return Resolution(taking[0]), len(taking) > 1  # more than one: Accept could decide
