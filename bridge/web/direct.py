"""Direct handlers: a whole request in, one response out, without ASGI and without a task.

The lean server (:mod:`bridge.web.server`) hands a request to a front-end's direct handler when
the request's head *and* its whole body have arrived (one small POST usually comes in one read),
and the dispatch table's entry for the path has one. The handler either declines at once
(returns False, having done nothing: the request then goes to the entry's ASGI handler as
always) or takes the request and calls :meth:`Responder.respond` exactly once, now or later
(from a Kafka acknowledgement's callback).

Why: an ASGI exchange costs a task, a scope dict, two ``send`` coroutines and a ``receive`` per
request, ~30 us of CPU on the produce path's ~10 us parse (bench/http_stack.py); a bet is a
small POST answered after Kafka's acknowledgement, which needs none of that. Everything the
server promises (ordering of pipelined requests, keep-alive, draining, Connection: close) holds:
the server still owns the connection and writes the response.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge.web.http1 import Head


# Made per request: a plain slots class (a frozen dataclass's __init__ costs ~0.1 us a field).
@dataclass(slots=True, eq=False)
class DirectRequest:
    head: Head
    body: bytes
    client: tuple[str, int] | None
    tls: bool


class Responder(Protocol):
    def respond(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        """The whole response; a ``content-length`` is added. Called once; later calls and a
        call after the client left are ignored."""


# Takes the request (True) or declines it untouched (False).
DirectHandler = Callable[[DirectRequest, Responder], bool]
