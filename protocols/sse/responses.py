"""The plain HTTP around an event stream: its response head, CORS, and problem+json errors.

Spoken directly in ASGI messages because the stream handler is mounted below the framework.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from bridge.web.problem import PROBLEM_TYPE, Problem

Send = Callable[[dict[str, Any]], Awaitable[None]]
HeaderList = list[tuple[bytes, bytes]]


STREAM_HEADERS: HeaderList = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    # nginx (and other buffering proxies) would otherwise hold events back.
    (b"x-accel-buffering", b"no"),
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
    body = Problem(status, kind, detail).body(instance)
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
