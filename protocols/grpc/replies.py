"""Request-reply for gRPC: one follower per reply topic, a future per correlation id.

The same contract as the HTTP front-end's (bridge/model/request_reply.py): the request record
carries ``correlation-id`` and ``reply-to``; the answer is the first record on the reply topic
with the same ``correlation-id``. Front-ends do not import each other, so this small follower is
gRPC's own (the HTTP one also serves replies by Location, which gRPC has no use for).
"""

from __future__ import annotations

import asyncio

from bridge.kafka.hub import Hub, Start, Subscription
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.model.request_reply import CORRELATION_HEADER, REPLY_TO_HEADER, STATUS_HEADER
from protocols.grpc import edgebridge_pb2 as pb

_INTERNAL = {CORRELATION_HEADER, REPLY_TO_HEADER, STATUS_HEADER}


class ReplyFollower:
    def __init__(self, hub: Hub, topic: str) -> None:
        self.hub = hub
        self.topic = topic
        self._waiting: dict[bytes, asyncio.Future[Message]] = {}
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.hub.subscribe(self.topic, self, Start.LIVE)

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
        for future in self._waiting.values():
            future.cancel()

    def deliver(self, record: Message, position: Position) -> None:
        correlation = record.header(CORRELATION_HEADER)
        if correlation is None:
            return
        future = self._waiting.pop(correlation, None)
        if future is not None and not future.done():
            future.set_result(record)

    def expect(self, correlation: str) -> asyncio.Future[Message]:
        """Register before producing the request, so a fast reply cannot be missed."""
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting[correlation.encode()] = future
        return future

    def forget(self, correlation: str) -> None:
        future = self._waiting.pop(correlation.encode(), None)
        if future is not None:
            future.cancel()


def reply_message(record: Message) -> pb.Reply:
    status = 200
    raw = record.header(STATUS_HEADER)
    if raw is not None:
        try:
            status = int(raw.decode())
        except ValueError:
            status = 502
    headers = {}
    for name, value in record.headers:
        if name.lower() in _INTERNAL or name.startswith(":"):
            continue
        headers[name] = value.decode("utf-8", "replace")
    return pb.Reply(value=record.value or b"", headers=headers, status=status)
