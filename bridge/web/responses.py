"""A whole response in two ASGI messages, for the listener's own answers and its pages."""

from __future__ import annotations

from typing import Any


async def send_whole(
    send: Any,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    length: int | None = None,
) -> None:
    """``body`` with a Content-Length (``length`` when the body is left out, as for HEAD)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-length", str(len(body) if length is None else length).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
