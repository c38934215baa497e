"""The plain HTTP around an event stream: its response head, CORS, and problem+json errors.

Spoken directly in ASGI messages because the stream handler is mounted below the framework.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]
HeaderList = list[tuple[bytes, bytes]]

PROBLEM_TYPE = "application/problem+json"
PROBLEM_BASE = "https://edgebridge.dev/problems/"

STREAM_HEADERS: HeaderList = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    # nginx (and other buffering proxies) would otherwise hold events back.
    (b"x-accel-buffering", b"no"),
]

# Browsers send Last-Event-ID without a preflight, but polyfills that set it (or a token) by hand
# trigger one, so the preflight must allow both.
ALLOWED_REQUEST_HEADERS = b"last-event-id, authorization, cache-control, accept"


class Cors:
    """Which origins may open streams (``[listeners.http] cors_origins``; ``*`` for any)."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origins)

    def allows(self, origin: str | None) -> bool:
        return origin is not None and (self.any or origin in self.origins)

    def headers(self, origin: str | None) -> HeaderList:
        if not self.allows(origin):
            return []
        assert origin is not None
        # Echo the origin (not "*") so EventSource's withCredentials works too.
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
            (b"vary", b"Origin"),
        ]

    def preflight(self, origin: str | None) -> HeaderList:
        if not self.allows(origin):
            return []
        return [
            *self.headers(origin),
            (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
            (b"access-control-allow-headers", ALLOWED_REQUEST_HEADERS),
            (b"access-control-max-age", b"600"),
        ]


def encode_headers(headers: Mapping[str, str]) -> HeaderList:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def send_problem(
    send: Send,
    status: int,
    kind: str,
    detail: str,
    instance: str,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """An RFC 9457 problem document: any non-200 also tells EventSource not to retry blindly."""
    body = json.dumps(
        {
            "type": PROBLEM_BASE + kind,
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            "instance": instance,
        },
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"content-type", PROBLEM_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_empty(send: Send, status: int, headers: HeaderList) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"0")],
        }
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})
