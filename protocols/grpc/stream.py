"""One Subscribe call: a hub subscriber with a bounded queue of encoded events.

Ids are the SSE ids of the same route and parameters (the same stream tag, the same
:meth:`Position.encode`), so a position handed out over gRPC resumes an SSE stream and back. As
in SSE, every call reading the same route and parameters shares a :class:`Channel`, which encodes
each live record once for all of them (the hub hands the same record and position objects to every
live subscriber in one pass): events leave as bytes, the server's serializer is the identity.

:meth:`GrpcStream.deliver` only buffers (the hub's contract). A client that falls ``limit`` events
behind *while its writer is blocked on the transport* is cut off: its call ends with
``RESOURCE_EXHAUSTED`` and it resumes by its last id. A burst that reaches a writer waiting for
work is always taken whole (the hub hands over a fetched batch in one synchronous pass, and a
catch-up after a long absence can be thousands of records), so a fast client is never cut off by
a burst, and a slow one costs at most one fetched batch plus ``limit`` events of memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import structlog

from bridge.edge.transform import Projector, project_all
from bridge.edge.validation import Violation
from bridge.kafka.hub import Subscription, TopicFeed
from bridge.kafka.resets import FROM_START
from bridge.kafka.stream_start import beginning, reachable
from bridge.model.config import Route
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.model.route_selection import RouteSelection
from protocols.grpc import edgebridge_pb2 as pb
from protocols.grpc import status

Kind = pb.Event.Kind

log = structlog.get_logger(__name__)
RESUME_METADATA = "last-message-id"
SYNC_TIMEOUT_S = 2.0  # how long an id ahead of this instance may take to become reachable


class Channel(RouteSelection):
    """A route plus parameters: what the calls reading it share (tag, key filter, memo)."""

    __slots__ = ("clients", "last")

    def __init__(self, route: Route, params: Mapping[str, str]) -> None:
        super().__init__(route, params)
        self.clients = 0
        # (record, position, bytes): the one-entry memo of the last live record encoded.
        self.last: tuple[Message, Position, bytes | None] | None = None

    def encode(self, record: Message, position: Position) -> bytes | None:
        """The serialized event of ``record`` (its id: ``position``), None if filtered out."""
        last = self.last
        if last is not None and last[0] is record and last[1] is position:
            return last[2]
        data = self.event(record, position.encode(self.tag)) if self.accepts(record) else None
        self.last = (record, position, data)
        return data

    @staticmethod
    def event(record: Message, event_id: str, kind: int | None = None) -> bytes:
        if kind is None:
            kind = Kind.DELETE if record.value is None else Kind.RECORD
        return pb.Event(
            kind=kind,  # type: ignore[arg-type]
            id=event_id,
            key=record.key or b"",
            value=record.value or b"",
            partition=record.partition or 0,
            offset=record.offset or 0,
            timestamp_ms=record.timestamp_ms or 0,
        ).SerializeToString()

    def marker(self, position: Mapping[int, int]) -> bytes:
        """No record: where the stream is now, so a client that drops before any record
        still resumes exactly."""
        epoch = position.epoch if isinstance(position, Position) else 0
        return pb.Event(
            kind=Kind.MARKER, id=Position(position, epoch).encode(self.tag)
        ).SerializeToString()

    def reset(self, reason: str, position: Position | None) -> bytes:
        event_id = position.encode(self.tag) if position is not None else ""
        return pb.Event(kind=Kind.RESET, id=event_id, reason=reason).SerializeToString()


class GrpcStream:
    """The subscriber of one call (a :class:`bridge.kafka.hub.ResettableSubscriber`)."""

    __slots__ = (
        "channel",
        "ended",
        "expired",
        "expiry",
        "limit",
        "overflowed",
        "queue",
        "subscription",
        "wake",
        "writer",
        "writing",
    )

    def __init__(self, channel: Channel, limit: int, expires_at: float | None = None) -> None:
        self.channel = channel
        self.limit = limit
        self.expired = False
        # The token's expiry ends the stream (as SSE and MQTT end theirs): one timer per call.
        self.expiry: asyncio.TimerHandle | None = None
        if expires_at is not None:
            self.expiry = asyncio.get_running_loop().call_later(
                max(0.0, expires_at - time.time()), self._expire
            )
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.overflowed = False
        self.ended = False  # the topic is gone: nothing more will come
        self.writing = False  # the writer has events in hand (not waiting for more)
        # The task writing to the client: interrupted when the stream overflows while it waits
        # for a write the client's flow-control window holds back.
        self.writer: asyncio.Task[Any] | None = None
        self.subscription: Subscription | None = None

    def deliver(self, record: Message, position: Position) -> None:
        if self.overflowed:
            return
        data = self.channel.encode(record, position)
        if data is None:
            return
        if self.writing and len(self.queue) >= self.limit:
            self.overflowed = True
            self.queue.clear()  # nothing more goes out: the client resumes from its last id
            if self.writing and self.writer is not None:
                self.writer.cancel()
            if self.subscription is not None:
                self.subscription.close()
        else:
            self.queue.append(data)
        self.wake.set()

    def reset(self, reason: str, position: Position | None) -> None:
        if self.overflowed:
            return
        self.queue.append(self.channel.reset(reason, position))
        if position is None:
            self.ended = True
        self.wake.set()

    def _expire(self) -> None:
        self.expired = self.ended = True
        self.queue.clear()
        if self.writing and self.writer is not None:
            self.writer.cancel()  # a write held back by the client's window
        self.wake.set()

    async def take(self) -> list[bytes]:
        """The events waiting (at least one), or [] once the stream is over."""
        self.writing = False
        while not self.queue:
            if self.overflowed or self.ended:
                return []
            self.wake.clear()
            await self.wake.wait()
        events = list(self.queue)
        self.queue.clear()
        self.writing = True
        return events

    def close(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
        if self.subscription is not None:
            self.subscription.close()


async def check_reachable(feed: TopicFeed, resume: Position) -> None:
    """Refuse an id beyond the end of the topic (stream_start.reachable)."""
    if not await reachable(feed, resume, SYNC_TIMEOUT_S):
        raise status.invalid(
            "bad-last-message-id",
            f"{RESUME_METADATA} names offsets beyond the end of the route's topic "
            "(was Kafka reset?); subscribe without it to start afresh",
            [Violation("/metadata/last-message-id", "beyond the end of the topic")],
        )


def beginning_of(
    feed: TopicFeed,
    channel: Channel,
    mode: str,
    resume: Position | None,
    after_reset: str = FROM_START,
    project: Projector | None = None,
) -> tuple[Mapping[int, int], list[bytes]]:
    """Where the subscription starts (bridge/kafka/stream_start.py's rule, SSE's too) and the
    events sent before its first record (a snapshot's events carry no id); ``project``: the
    subscriber's view of the route's records."""

    def wanted(record: Message) -> bool:
        return (channel.key is None or record.key == channel.key) and channel.accepts(record)

    begin = beginning(feed, mode, resume, wanted, after_reset)
    first: list[bytes] = []
    if begin.reset is not None:
        assert resume is not None
        log.info("grpc.resume_reset", topic=feed.topic, old_epoch=resume.epoch)
        first.append(channel.reset(begin.reset, begin.position))
    snapshot = project_all(begin.snapshot, project)
    first.extend(channel.event(r, "", pb.Event.Kind.SNAPSHOT) for r in snapshot)
    if begin.marker:
        first.append(channel.marker(begin.position))
    return begin.position, first
