"""An HTTP/1.1 request head, read into the ASGI ``http`` scope the SSE handler already takes.

Sans-io: bytes in, a scope dict or :class:`BadHead` out. The lean listener (``lean.py``) only
ever needs the head (an event stream's request has no body and its response never ends), so
h11's strict parser is run once over the complete head and then dropped: no parser object is
kept per connection.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import h11

# A browser's EventSource request with cookies and a token fits in a few KiB; anything bigger is
# refused before it costs memory (431, like Hypercorn's h11 limit).
MAX_HEAD_BYTES = 8 * 1024
HEAD_END = b"\r\n\r\n"


class BadHead(Exception):
    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


def head_length(buffer: bytes | bytearray) -> int:
    """The length of the complete head at the start of ``buffer``; 0 while it is incomplete.

    Raises :class:`BadHead` once the buffer is past the size cap without a complete head.
    """
    end = buffer.find(HEAD_END, 0, MAX_HEAD_BYTES + len(HEAD_END))
    if end >= 0:
        return end + len(HEAD_END)
    if len(buffer) > MAX_HEAD_BYTES:
        raise BadHead(
            431,
            "request-head-too-large",
            f"the request head is over {MAX_HEAD_BYTES} bytes; send fewer or smaller headers",
        )
    return 0


def parse_head(head: bytes, client: tuple[str, int] | None) -> dict[str, Any]:
    """The ASGI scope of one complete request head (as cut by :func:`head_length`)."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    connection.receive_data(head)
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError as exc:
        raise BadHead(400, "bad-request", f"malformed HTTP/1.1 request head: {exc}") from exc
    if not isinstance(event, h11.Request):  # cannot happen for a complete head; be explicit
        raise BadHead(400, "bad-request", "malformed HTTP/1.1 request head")
    target = bytes(event.target)
    if not target.startswith(b"/"):
        raise BadHead(400, "bad-request", "the request target must be an absolute path")
    path, _, query = target.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": event.http_version.decode("ascii"),
        "method": event.method.decode("ascii"),
        "scheme": "http",
        "path": unquote(path.decode("ascii")),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": [(bytes(name), bytes(value)) for name, value in event.headers],
        "client": client,
    }
