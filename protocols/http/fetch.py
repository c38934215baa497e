"""GET routes on (compacted) topics: the latest value of one key, or of every key, with ETags.

The hub's table feed holds the latest record per key. A key's ETag encodes where that record
is (partition, offset + 1) with a tag naming the route and key, so it changes exactly when a
newer record for the key arrives and can never be mistaken for another key's. A collection's
ETag encodes the whole feed position. ``If-None-Match`` with ``Prefer: wait=N`` waits for a
change instead of answering ``304`` at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from bridge.edge.governance import FilterError, subscriber_filter
from bridge.edge.transform import Projector, project_all
from bridge.edge.validation import is_json_type
from bridge.kafka.hub import Hub, Start, TopicFeed
from bridge.model import strict_json
from bridge.model.config import Route
from bridge.model.errors import KafkaUnavailable
from bridge.model.jurisdiction import Decision
from bridge.model.message import Message
from bridge.model.position import Position, stream_tag
from bridge.model.record_filter import RecordFilter
from bridge.telemetry import metrics
from bridge.web.problem import Problem
from protocols.http.asgi import Request, Response
from protocols.http.options import HttpOptions
from protocols.http.prefer import parse_prefer

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Conditions:
    """What a conditional GET asks: not this ETag, and how long it will wait for a change."""

    if_none_match: str | None
    wait: float


class _Changed:
    """A subscriber that only notes that something arrived."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def deliver(self, record: Message, position: Position) -> None:
        self.event.set()


def key_etag(route: Route, key: bytes, record: Message, epoch: int = 0) -> str:
    """The record's position (with the topic's epoch: an ETag of a recreated topic's record at
    the same offset never matches) under a tag naming the route and key."""
    assert record.partition is not None and record.offset is not None
    position = Position({record.partition: record.offset + 1}, epoch)
    return '"' + position.encode(stream_tag(route.name, key.decode("utf-8", "replace"))) + '"'


def collection_etag(route: Route, feed: TopicFeed) -> str:
    return '"' + Position(feed.position, feed.epoch).encode(stream_tag(route.name, "*")) + '"'


def matches_etag(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    candidates = [c.strip() for c in if_none_match.split(",")]
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


class FetchHandler:
    def __init__(self, hub: Hub, timeout_s: float) -> None:
        self.hub = hub
        self.timeout_s = timeout_s

    async def _feed(self, topic: str) -> TopicFeed:
        try:
            return await asyncio.wait_for(self.hub.table(topic), self.timeout_s)
        except (TimeoutError, KafkaUnavailable) as exc:
            raise Problem(
                503,
                "kafka-unavailable",
                f"topic {topic} cannot be read now",
                headers={"retry-after": "2"},
            ) from exc

    async def _changed(
        self, topic: str, key: bytes | None, unchanged: Callable[[], bool], wait: float
    ) -> bool:
        """Wait up to ``wait`` for a record (of ``key``) while ``unchanged()``; True if one came.

        The check runs after subscribing, so a record arriving in between is never missed.
        """
        if wait <= 0:
            return False
        arrived = _Changed()
        subscription = await self.hub.subscribe(topic, arrived, Start.LIVE, key=key)
        try:
            if not unchanged():
                return True
            await asyncio.wait_for(arrived.event.wait(), wait)
            return True
        except TimeoutError:
            return False
        finally:
            subscription.close()

    async def handle(
        self,
        request: Request,
        route: Route,
        options: HttpOptions,
        params: dict[str, str],
        decision: Decision | None = None,
        project: Projector | None = None,
    ) -> Response:
        """``project``: what this caller sees of the route's records (its outbound view)."""
        try:
            values = {name: found[0] for name, found in request.query.items()}
            record_filter = subscriber_filter(route, values, decision)
        except FilterError as exc:
            log.info("http.bad_filter", route=route.name, parameter=exc.parameter, detail=str(exc))
            raise Problem(400, "bad-filter", str(exc), parameter=exc.parameter) from exc
        feed = await self._feed(route.topic)
        prefs = parse_prefer(request.header_values("prefer"))
        when = Conditions(request.header("if-none-match"), prefs.wait(0.0, options.wait_max_s))
        if options.collection:
            response = await self._collection(route, feed, params, when, record_filter, project)
        else:
            response = await self._one(route, feed, params, when, record_filter, project)
        if route.transform is not None and route.transform.outbound:
            # What the body holds depends on who asks (the route's views): no cache may hand
            # one caller's answer to another.
            response.headers.append(("vary", "authorization"))
        return response

    async def _one(
        self,
        route: Route,
        feed: TopicFeed,
        params: dict[str, str],
        when: Conditions,
        record_filter: RecordFilter | None = None,
        project: Projector | None = None,
    ) -> Response:
        if route.key is None:
            raise Problem(
                500, "route-without-key", f"route {route.name} has no key template to fetch by"
            )
        rendered = route.key.render(params)
        if rendered is None:
            raise Problem(
                400, "unfetchable", f"the path lacks a value for the key {route.key.source}"
            )
        key = rendered.encode()
        record = feed.latest.get(key)
        if record is None:
            raise Problem(404, "unknown-key", f"no value for key {rendered!r} in {route.name}")
        if record_filter is not None and not record_filter.matches_record(record):
            raise Problem(
                404, "filtered-out", f"the value of key {rendered!r} does not match the filter"
            )
        etag = key_etag(route, key, record, feed.epoch)
        if matches_etag(when.if_none_match, etag):
            first = record
            if not await self._changed(
                route.topic, key, lambda: feed.latest.get(key) is first, when.wait
            ):
                return Response(304, [("etag", etag)])
            record = feed.latest.get(key)
            if record is None:
                raise Problem(404, "unknown-key", f"key {rendered!r} was deleted from {route.name}")
            etag = key_etag(route, key, record, feed.epoch)
        content_type = _content_type(route, record)
        if project is not None:
            projected = project(record)
            if projected is None:
                raise Problem(
                    502,
                    "view-unavailable",
                    f"the stored value of key {rendered!r} in {route.name} cannot be shown in "
                    "the view this caller gets (not JSON, or the route's outbound transform "
                    "failed on it)",
                )
            record = projected
        if is_json_type(content_type) and not strict_json.is_strict(record.value):
            # Written past the edge (a raw Kafka producer): never hand a client NaN as JSON.
            log.warning(
                "http.fetch_invalid_record", route=route.name, key=key, offset=record.offset
            )
            raise Problem(
                502,
                "invalid-record",
                f"the stored value of key {rendered!r} in {route.name} is not strict JSON "
                "(NaN, Infinity or a duplicate member?); it was written past the bridge",
            )
        metrics.message_out(route.name, "http", len(record.value or b""))
        return Response(200, [("content-type", content_type), ("etag", etag)], record.value or b"")

    async def _collection(
        self,
        route: Route,
        feed: TopicFeed,
        params: dict[str, str],
        when: Conditions,
        record_filter: RecordFilter | None = None,
        project: Projector | None = None,
    ) -> Response:
        etag = collection_etag(route, feed)
        if matches_etag(when.if_none_match, etag):
            unchanged = etag
            if not await self._changed(
                route.topic, None, lambda: collection_etag(route, feed) == unchanged, when.wait
            ):
                return Response(304, [("etag", etag)])
            etag = collection_etag(route, feed)
        members = _members(route, feed, params)
        if record_filter is not None:
            members = [r for r in members if record_filter.matches_record(r)]
        members = project_all(members, project)  # (a member that cannot be shown is left out)
        body = strict_json.dumps([_json_value(r) for r in members])
        metrics.message_out(route.name, "http", len(body))
        return Response.json(200, body, [("etag", etag)])


def _members(route: Route, feed: TopicFeed, params: dict[str, str]) -> list[Message]:
    """The latest record of every key that belongs to this route and these path parameters."""
    members = []
    for record in feed.latest.values():
        found = route.params_from_record(record.key, record.headers)
        if found is None:
            continue
        if all(found.get(name) == value for name, value in params.items()):
            members.append(record)
    members.sort(key=lambda r: (r.partition or 0, r.offset or 0))
    return members


def _json_value(record: Message) -> Any:
    """A strict JSON value as itself; anything else (NaN included) as text, so the array stays
    valid JSON."""
    raw = record.value or b""
    try:
        return strict_json.loads(raw)
    except strict_json.StrictJsonError:
        return raw.decode("utf-8", "replace")


def _content_type(route: Route, record: Message) -> str:
    header = record.header("content-type")
    if header is not None:
        return header.decode("latin-1")
    if route.content_type:
        return route.content_type
    return "application/json" if route.schema is not None else "application/octet-stream"
