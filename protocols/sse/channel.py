"""A channel is one logical event stream: a route plus the path parameters a client asked for.

Every client of ``/matches/7/odds`` shares one channel, and the channel encodes each Kafka record
into SSE bytes once: the hub hands the *same* record and position objects to every live
subscriber in one synchronous pass, so a one-entry identity memo turns N encodings into one.
Replayed records (a client catching up by id) carry their own positions and miss the memo, which
is right: their ids differ.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from bridge.edge.validation import is_json_type
from bridge.model import strict_json
from bridge.model.config import Route
from bridge.model.message import Message
from bridge.model.position import Position
from bridge.model.route_selection import RouteSelection
from protocols.sse import encoder
from protocols.sse.options import SseOptions

DELETE_EVENT = "delete"
# Sent in place of a record of a JSON route that is not strict JSON (written past the edge).
INVALID_EVENT = "invalid-record"

# Sent when the stream does not continue what came before (see Channel.reset_event).
RESET_EVENT = "reset"
RESET_DETAILS = {
    "reset": "the topic was created again (or its broker replaced): its records follow from "
    "the start; earlier ids do not apply",
    "truncated": "records were deleted (retention) before this stream read them: what is left "
    "follows",
    "deleted": "the topic was deleted: the stream ends; reconnect later",
}

log = structlog.get_logger(__name__)


class Channel(RouteSelection):
    __slots__ = (
        "clients",
        "delivered",
        "delivered_bytes",
        "json",
        "last_bytes",
        "last_position",
        "last_record",
        "options",
    )

    def __init__(self, route: Route, params: Mapping[str, str], options: SseOptions) -> None:
        super().__init__(route, params)
        self.options = options
        # A JSON route's records are checked once per record (not per client) before they go
        # out: a value written past the edge with NaN in it must not reach a page as JSON.
        self.json = route.schema is not None or is_json_type(route.content_type)
        self.clients = 0
        self.delivered = 0  # deliveries since the metrics were last published
        self.delivered_bytes = 0
        # The one-entry memo (read directly by EventStream.deliver, the hot path).
        self.last_record: Message | None = None
        self.last_position: Position | None = None
        self.last_bytes: bytes | None = None

    def encode(self, record: Message, position: Position) -> bytes | None:
        """The event for ``record`` with ``position`` as its id; None if it is filtered out."""
        if record is self.last_record and position is self.last_position:
            return self.last_bytes
        data = self.render(record, position.encode(self.tag)) if self.accepts(record) else None
        self.last_record, self.last_position, self.last_bytes = record, position, data
        return data

    def render(self, record: Message, event_id: str | None) -> bytes:
        if record.value is None:
            # A tombstone: the key is what a page needs to drop the item it shows.
            key = record.key.decode("utf-8", "replace") if record.key is not None else ""
            return encoder.event(key, DELETE_EVENT, event_id)
        if self.json and not strict_json.is_strict(record.value):
            log.warning(
                "sse.invalid_record", route=self.route.name, key=record.key, offset=record.offset
            )
            reason = {
                "type": INVALID_EVENT,
                "detail": "a record of this stream is not strict JSON; it was skipped",
                "partition": record.partition,
                "offset": record.offset,
            }
            return encoder.event(strict_json.dumps(reason), INVALID_EVENT, event_id)
        return encoder.event(record.value, self.options.event, event_id)

    def marker(self, position: Mapping[int, int]) -> bytes:
        """An id-only event at ``position``: where this stream's client now is."""
        epoch = position.epoch if isinstance(position, Position) else 0
        return encoder.position_marker(Position(position, epoch).encode(self.tag))

    def reset_event(self, reason: str, position: Position | None) -> bytes:
        """``event: reset``: what came before is not continued (the topic was recreated, or
        records were deleted before they were read, or the topic is gone). Its id, when there is
        one, is the start of what follows, so a reconnect resumes there."""
        detail = RESET_DETAILS.get(reason, reason)
        data = strict_json.dumps({"type": RESET_EVENT, "reason": reason, "detail": detail})
        event_id = position.encode(self.tag) if position is not None else None
        return encoder.event(data, RESET_EVENT, event_id)
