"""The request-reply contract between the bridge and the services that answer requests.

A request record carries ``correlation-id`` and ``reply-to`` headers; the service that answers
writes a record to the reply-to topic with the same ``correlation-id`` and, optionally, a
``:status`` header (the HTTP status; the value is the body). The HTTP front-end speaks it and
the AsyncAPI document describes it, so the names live here once (docs/http.md).
"""

from __future__ import annotations

CORRELATION_HEADER = "correlation-id"
REPLY_TO_HEADER = "reply-to"
STATUS_HEADER = ":status"
