"""Forwarding a request to the instance that owns its idempotency key (Kafka Streams' interactive
queries, over HTTP).

The request goes as it came: method, path and query, headers (``Authorization`` included: the
owner authenticates and authorizes it again with the same guard) and body, plus
:data:`FORWARDED_HEADER` naming this instance, so it is never forwarded twice: an instance that
gets a forwarded request for a key it does not own answers ``503`` with ``Retry-After`` (the
owners are moving). The owner's answer comes back unchanged.

httpx (already the test suite's client) keeps a pool of keep-alive connections per owner, so a
forward costs no TCP or HTTP set-up once warm, and never blocks the event loop.
"""

from __future__ import annotations

import httpx
import structlog

from bridge.web.problem import Problem
from protocols.http.asgi import Request, Response

log = structlog.get_logger(__name__)

FORWARDED_HEADER = "edgebridge-forwarded-by"
# Hop-by-hop headers (RFC 9110 7.6.1) and those httpx sets itself from the body and URL.
_NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        FORWARDED_HEADER,
    }
)
_NOT_RETURNED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}
)
RETRY_AFTER_S = "1"


def is_forwarded(request: Request) -> bool:
    return request.header(FORWARDED_HEADER) is not None


def moving(detail: str) -> Problem:
    """The answer while ownership of a key is moving between instances."""
    return Problem(503, "ledger-rebalancing", detail, headers={"retry-after": RETRY_AFTER_S})


class Forwarder:
    def __init__(self, address: str, max_connections: int = 100) -> None:
        self.address = address  # ours, advertised: named in the forwarded header
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def forward(self, owner: str, request: Request, body: bytes, timeout: float) -> Response:
        if is_forwarded(request):  # the sender thought we own it: ownership is moving
            raise moving(f"this instance does not own the key (the owner is {owner})")
        url = f"http://{owner}{request.path}"
        if request.query_string:
            url += f"?{request.query_string}"
        headers = [(k, v) for k, v in request.headers if k not in _NOT_FORWARDED]
        headers.append((FORWARDED_HEADER, self.address))
        try:
            answer = await self._client.request(
                request.method, url, headers=headers, content=body, timeout=timeout
            )
        except httpx.HTTPError as exc:
            # The owner is gone or unreachable: the group will move its partitions shortly.
            log.warning("http.forward_failed", owner=owner, error=repr(exc))
            raise moving(f"the owner of this key ({owner}) did not answer: {exc!r}") from exc
        returned = [(k, v) for k, v in answer.headers.multi_items() if k not in _NOT_RETURNED]
        return Response(answer.status_code, returned, answer.content)
