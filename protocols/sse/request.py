"""What a client asks for when it opens an event stream, read from the ASGI scope.

Everything a client can get wrong ends here as :class:`StreamRefused`: a status, a machine
readable ``kind`` and a sentence saying what to fix, sent as ``application/problem+json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from bridge.model.position import MAX_ENCODED_LENGTH, Position, PositionError

EVENT_STREAM = "text/event-stream"


class StreamRefused(Exception):
    def __init__(
        self, status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class StreamRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names; the last value wins
    query: dict[str, str]  # the first value of each parameter
    client: str | None

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any]) -> StreamRequest:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query_string = scope.get("query_string", b"").decode("latin-1")
        query = {k: v[0] for k, v in parse_qs(query_string, keep_blank_values=True).items()}
        client = scope.get("client")
        return cls(
            method=scope["method"].upper(),
            path=scope["path"],
            headers=headers,
            query=query,
            client=f"{client[0]}:{client[1]}" if client else None,
        )

    @property
    def token(self) -> str | None:
        """A bearer token from ``Authorization``, else from ``?access_token=`` (EventSource
        cannot set headers)."""
        authorization = self.headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise StreamRefused(
                    401,
                    "bad-authorization",
                    "Authorization must be 'Bearer <token>'",
                    {"WWW-Authenticate": 'Bearer error="invalid_request"'},
                )
            return token.strip()
        return self.query.get("access_token") or None

    @property
    def last_event_id(self) -> str | None:
        """``Last-Event-ID`` (what browsers send on reconnect), else ``?lastEventId=`` (what
        polyfills and first connections carrying a saved id use). Empty means none."""
        value = self.headers.get("last-event-id")
        if not value:
            value = self.query.get("lastEventId")
        return value.strip() or None if value else None

    def resume_position(self, tag: int) -> Position | None:
        """The position an id names, refused if it is not an id of *this* stream."""
        event_id = self.last_event_id
        if event_id is None:
            return None
        if len(event_id) > MAX_ENCODED_LENGTH:
            raise StreamRefused(
                400, "bad-last-event-id", "Last-Event-ID is too long to be an id of this stream"
            )
        try:
            return Position.decode(event_id, tag)
        except PositionError as exc:
            raise StreamRefused(
                400,
                "bad-last-event-id",
                f"Last-Event-ID {event_id[:64]!r} cannot resume {self.path}: {exc}. "
                "Reconnect without it to start afresh.",
            ) from exc

    def accepts_event_stream(self) -> bool:
        accept = self.headers.get("accept", "")
        return EVENT_STREAM in accept or "*/*" in accept or not accept
