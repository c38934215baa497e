"""The thin ASGI layer: a request's head, its body read under a size limit, and responses.

The front-end is mounted as a raw ASGI handler on the shared listener (no framework per request):
the handlers work on :class:`Request` and return :class:`Response`, and only this module speaks
ASGI messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from bridge.web.direct import DirectRequest
from bridge.web.problem import PROBLEM_TYPE, Problem

BODY_TIMEOUT_S = 30.0  # [listeners.http] body_timeout_s: a body must be complete this soon
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    query_string: str
    headers: list[tuple[str, str]]  # lower-case names, latin-1 decoded, order kept
    client: str | None
    receive: Receive = field(repr=False)
    preread: bytes | None = field(default=None, repr=False)  # the whole body, read already

    @classmethod
    def from_scope(cls, scope: dict[str, Any], receive: Receive) -> Request:
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        client = scope.get("client")
        query_string = scope.get("query_string", b"").decode("latin-1")
        return cls(
            method=scope["method"].upper(),
            path=scope["path"],
            query=parse_qs(query_string) if query_string else {},
            query_string=query_string,
            headers=headers,
            client=f"{client[0]}:{client[1]}" if client else None,
            receive=receive,
        )

    @classmethod
    def from_direct(cls, request: DirectRequest) -> Request:
        """A request whose whole body the server read (bridge/web/direct.py)."""
        head, client = request.head, request.client
        query_string = head.query_string.decode("latin-1")
        return cls(
            method=head.method,
            path=head.path,
            query=parse_qs(query_string) if query_string else {},
            query_string=query_string,
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers],
            client=f"{client[0]}:{client[1]}" if client else None,
            receive=_nothing_to_receive,
            preread=request.body,
        )

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (lower case), or None."""
        for key, value in self.headers:  # a plain loop: this runs several times per request
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def read_body(self, limit: int) -> bytes | None:
        """The body if the server read it whole (a direct request), else None (then
        :meth:`body`); :class:`Problem` 413 when it exceeds, or declares more than, ``limit``."""
        declared = self.header("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise Problem(
                    400, "bad-content-length", f"Content-Length {declared!r} is not a number"
                )
            if int(declared) > limit:
                raise _too_large(limit, declared=int(declared))
        if self.preread is not None and len(self.preread) > limit:
            raise _too_large(limit)
        return self.preread

    async def body(self, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
        """The whole body; :class:`Problem` 413 as soon as it is known to exceed ``limit``, 408
        (and the connection closed) if it is not complete within ``timeout_s``: a client that
        declares 100 bytes and sends 10 must not hold a connection and a task for ever."""
        whole = self.read_body(limit)
        if whole is not None:
            return whole
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    more = message.get("more_body", False)
                    if size > limit:
                        # At once: the listener reads and drops the rest while it closes the
                        # connection (bridge/web/server.py, lingering close).
                        raise _too_large(limit)
                    chunks.append(chunk)
                    if not more:
                        return b"".join(chunks)
        except TimeoutError:
            raise Problem(
                408,
                "request-timeout",
                f"the request body was not complete within {timeout_s:g} s "
                f"({size} bytes arrived); the connection is closed",
                headers={"connection": "close"},
            ) from None


async def _nothing_to_receive() -> dict[str, Any]:
    return {"type": "http.disconnect"}  # a direct request's body was read by the server


def _too_large(limit: int, declared: int | None = None) -> Problem:
    what = f"the declared body of {declared} bytes" if declared is not None else "the body"
    return Problem(
        413,
        "payload-too-large",
        f"{what} exceeds this route's max_body_bytes of {limit} bytes",
        limit=limit,
    )


class ClientGone(Exception):
    """The client disconnected before the request body was complete."""


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    @classmethod
    def json(
        cls, status: int, body: bytes, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        return cls(status, [("content-type", "application/json"), *(headers or [])], body)

    @classmethod
    def problem(cls, problem: Problem, instance: str | None = None) -> Response:
        headers = [("content-type", PROBLEM_TYPE), *problem.headers.items()]
        return cls(problem.status, headers, problem.body(instance))


async def send_response(
    send: Send, response: Response, extra_headers: list[tuple[str, str]]
) -> None:
    headers = [*response.headers, *extra_headers, ("content-length", str(len(response.body)))]
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": response.body, "more_body": False})
