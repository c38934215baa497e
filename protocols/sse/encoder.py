"""The Server-Sent Events wire format, as pure functions from values to bytes (no I/O).

An event is ``field: value`` lines closed by a blank line (WHATWG HTML, "Server-sent events").
A value may not contain CR or LF, so multi-line data becomes one ``data:`` line per line and the
browser joins them back with LF. Everything here is UTF-8; bytes that are not valid UTF-8 are
replaced (a browser would replace them too, so the stream we send is never ambiguous).
"""

from __future__ import annotations

import re

_NEWLINE = re.compile(r"\r\n|\r|\n")

HEARTBEAT = b":\n\n"
"""A comment line: keeps proxies and NAT tables from timing out an idle stream; never an event."""


class FieldError(ValueError):
    """A field value that would break the framing (an event name or id with a newline)."""


def _single_line(name: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise FieldError(f"SSE {name} may not contain a newline: {value!r}")
    return value


def event(data: str | bytes, event_name: str | None = None, event_id: str | None = None) -> bytes:
    """One complete event, ``data`` split into ``data:`` lines so that it round-trips exactly."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    parts: list[str] = []
    if event_id is not None:
        parts.append(f"id: {_single_line('id', event_id)}\n")
    if event_name is not None:
        parts.append(f"event: {_single_line('event', event_name)}\n")
    for line in _NEWLINE.split(text):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def position_marker(event_id: str) -> bytes:
    """An id with no data: the browser records it as ``lastEventId`` but dispatches nothing.

    Sent when a stream starts, so that a client that drops before its first event still
    resumes from where it joined instead of from "live" at reconnect (which would lose records).
    """
    return f"id: {_single_line('id', event_id)}\n\n".encode()


def retry(milliseconds: int) -> bytes:
    """The reconnection delay the client should use."""
    return f"retry: {int(milliseconds)}\n\n".encode()


def comment(text: str = "") -> bytes:
    return "".join(f":{line}\n" for line in _NEWLINE.split(text)).encode("utf-8") + b"\n"
