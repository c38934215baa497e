"""Where a subscriber's stream begins: the one rule for every front-end that streams a route.

SSE, gRPC Subscribe and MCP reads all start a stream the same way, and all must keep the same
promise (docs/operations.md, "When Kafka's own events move a position"): a resume id of the
topic's current incarnation resumes exactly; an id of another incarnation (the topic recreated,
the broker replaced) is *declared* a reset and the new incarnation follows from its start; an id
beyond the topic's end is refused, never waited on silently. A fresh stream starts live, from the
earliest record, or with a snapshot of the latest value per key, and is told its position at once
so that even a client that drops before any record resumes exactly.

Front-ends render what :func:`beginning` decides in their own protocol (an SSE event, a gRPC
message, an MCP tool result) and subscribe to the hub at :attr:`Beginning.position` with nothing
awaited in between, so no record slips between the two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.kafka.hub import Start, TopicFeed
from bridge.kafka.resets import FROM_START, RESET
from bridge.model.message import Message
from bridge.model.position import Position

# How a fresh stream starts (the route's or the client's choice); "resume" when it has an id.
LIVE, EARLIEST, SNAPSHOT, RESUME = "live", "earliest", "snapshot", "resume"


@dataclass(frozen=True, slots=True)
class Beginning:
    """What a stream sends before its first live record, and where it subscribes."""

    position: Position  # where the hub subscription starts
    reset: str | None = None  # the resume id was of another incarnation: say so first
    snapshot: list[Message] = field(default_factory=list)  # latest values, sent without ids
    marker: bool = False  # a fresh stream: tell the client its position before any record


def from_start(feed: TopicFeed) -> Position:
    """The start of the topic's current incarnation."""
    return Position({p: 0 for p in feed.partitions}, feed.epoch)


def another_incarnation(feed: TopicFeed, resume: Position) -> bool:
    """An id whose epoch is not the topic's current one. Ids without an epoch (made before
    epochs, or on a cluster without topic ids) are trusted as they always were."""
    return bool(resume.epoch and feed.epoch and resume.epoch != feed.epoch)


async def reachable(feed: TopicFeed, resume: Position, timeout: float) -> bool:
    """Whether ``resume`` is within the topic: an id slightly ahead of this instance (another
    instance read further) is, once this one has caught up (waited for up to ``timeout``); an id
    beyond the end (a reset broker, a forged id) is not, and resuming there would wait silently
    for offsets that may never come."""

    def reached() -> bool:
        return all(feed.position.get(p, 0) >= o for p, o in resume.items() if p in feed.partitions)

    if reached():
        return True
    with contextlib.suppress(TimeoutError):
        await feed.sync(timeout=timeout)
    return reached()


def after_reset_start(feed: TopicFeed, after_reset: str) -> Position:
    """Where a reader goes on after a reset (its position of another incarnation, a topic back
    after deletion): the start of the new incarnation, or its live end (a route's
    ``after_reset = "live"``). The one decision for every front-end."""
    if after_reset == FROM_START:
        return from_start(feed)
    return Position(feed.position, feed.epoch)


def hub_start_after_reset(after_reset: str) -> Start:
    """:func:`after_reset_start` for a hub subscription made now (MQTT sessions, rejoins)."""
    return Start.EARLIEST if after_reset == FROM_START else Start.LIVE


def beginning(
    feed: TopicFeed,
    mode: str,
    resume: Position | None,
    wanted: Callable[[Message], bool],
    after_reset: str = FROM_START,
) -> Beginning:
    """Where a stream in ``mode`` (``resume`` when ``resume`` is given) begins. ``wanted``: does
    a snapshot record belong to this stream (its key, parameters and filter)? ``after_reset``:
    the route's choice after a reset (:func:`after_reset_start`). Never awaits."""
    if resume is not None:
        if another_incarnation(feed, resume):
            # Its offsets mean nothing now: say so, then the new incarnation from its start (or
            # live, as the route asks); never a stream that silently starts mid-way.
            return Beginning(after_reset_start(feed, after_reset), reset=RESET)
        return Beginning(resume)
    if mode == EARLIEST:
        return Beginning(from_start(feed), marker=True)
    position = Position(feed.position, feed.epoch)
    if mode == SNAPSHOT:
        snapshot = [record for record in list(feed.latest.values()) if wanted(record)]
        return Beginning(position, snapshot=snapshot, marker=True)
    return Beginning(position, marker=True)
