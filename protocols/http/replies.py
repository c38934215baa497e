"""Request-reply over HTTP: a reply record -> the HTTP response.

The waiting is bridge/kafka/replies.py's ReplyFollower. A reply's ``:status`` header becomes the
HTTP status, its other headers HTTP headers, its value the body. A ``202 Accepted`` carries a
``Location`` with the reply topic's position at request time; a GET on it (on any instance, after
any restart) reads the topic from there for the reply.
"""

from __future__ import annotations

from bridge.model.message import Message
from bridge.model.request_reply import EXCHANGE_HEADERS, reply_status
from protocols.http.asgi import Response

_HOP_BY_HOP = {"connection", "content-length", "transfer-encoding", "keep-alive", "upgrade"}


def reply_response(record: Message) -> Response:
    """The HTTP response a reply record stands for."""
    headers = []
    for name, value in record.headers:
        lowered = name.lower()
        if lowered in EXCHANGE_HEADERS or lowered in _HOP_BY_HOP or lowered.startswith(":"):
            continue
        try:
            headers.append((lowered, value.decode("latin-1")))
        except UnicodeDecodeError:
            continue
    return Response(reply_status(record), headers, record.value or b"")
