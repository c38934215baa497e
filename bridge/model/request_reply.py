"""The request-reply contract between the bridge and the services that answer requests.

A request record carries ``correlation-id`` and ``reply-to`` headers; the service that answers
writes a record to the reply-to topic with the same ``correlation-id`` and, optionally, a
``:status`` header (the HTTP status; the value is the body). The HTTP front-end speaks it and
the AsyncAPI document describes it, so the names live here once (docs/http.md).
"""

from __future__ import annotations

from bridge.model.message import Message

CORRELATION_HEADER = "correlation-id"
REPLY_TO_HEADER = "reply-to"
STATUS_HEADER = ":status"
# Headers about the Kafka exchange, not the answer: never handed on to the caller.
EXCHANGE_HEADERS = frozenset({CORRELATION_HEADER, REPLY_TO_HEADER, STATUS_HEADER})


def reply_status(record: Message) -> int:
    """The status a reply record states: its ``:status`` header, 200 without one, and 502 (the
    answering service misbehaved) for anything that is not an HTTP status."""
    raw = record.header(STATUS_HEADER)
    if raw is None:
        return 200
    try:
        status = int(raw.decode())
    except ValueError:
        return 502
    return status if 200 <= status <= 599 else 502
