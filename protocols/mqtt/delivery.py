"""Delivering records to this instance's MQTT clients, cheaply for many subscribers.

The hub hands the same record object to every subscriber, so what depends only on the record is
worked out once per record: its route and MQTT topic (:meth:`Delivery.resolve`), and its PUBLISH
encoded once per (QoS, version, subscription ids) (:meth:`Delivery.encoder`; per connection only
the packet id and topic alias are spliced in). Writes are coalesced: a client with something to
send is marked dirty and flushed once per loop turn, and deliveries are counted in the metrics
then too, because a record fanned out to thousands of subscribers must not take the metrics'
locks each time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Protocol

from bridge.model.config import Route
from bridge.model.message import Message
from bridge.model.routing import RouteTable
from bridge.model.topic_filter import filter_matches
from bridge.telemetry import metrics

from . import records
from .subscriptions import RESET_PROPERTY
from .wire.codec import PreparedPublish, prepare_publish
from .wire.packets import EMPTY_PROPERTIES

PROTOCOL = "mqtt"
MATCH_CACHE = 65_536


class Flushable(Protocol):
    def flush(self) -> None:
        """Write what the connection has queued."""
        ...


class Delivery:
    def __init__(self, routes: RouteTable, max_write_buffer: int) -> None:
        self.routes = routes
        self.max_write_buffer = max_write_buffer  # bytes waiting for a client before it is cut
        self._dirty: set[Flushable] = set()
        self._flush_scheduled = False
        self._resolved: tuple[Message | None, tuple[Route, str] | None] = (None, None)
        self._encoders: dict[tuple[int, int, tuple[int, ...], str | None], PreparedPublish] = {}
        self._encoders_for: Message | None = None
        self._matches: dict[tuple[str, str], bool] = {}
        self._delivered: dict[str, list[int]] = {}  # route -> [deliveries, bytes] not yet counted

    # -- per-record caches ---------------------------------------------------------------------

    def matches(self, topic_filter: str, topic: str) -> bool:
        """``filter_matches``, cached: thousands of subscribers share a few filters and topics."""
        key = (topic_filter, topic)
        found = self._matches.get(key)
        if found is None:
            found = filter_matches(topic_filter, topic)
            if len(self._matches) >= MATCH_CACHE:
                self._matches.clear()
            self._matches[key] = found
        return found

    def resolve(self, record: Message) -> tuple[Route, str] | None:
        """The route and MQTT topic of a Kafka record (cached for the record being fanned out)."""
        last, resolved = self._resolved
        if last is record:
            return resolved
        resolved = self._resolve(record)
        self._resolved = (record, resolved)
        return resolved

    def _resolve(self, record: Message) -> tuple[Route, str] | None:
        routes = self.routes
        raw = record.header(records.TOPIC)
        if raw is not None:
            topic = raw.decode("utf-8", "replace")
            match = routes.mqtt.match(topic)
            if match is not None and match.target.topic == record.topic:
                return match.target, topic
        return routes.mqtt_topic_of(record)

    def encoder(
        self,
        record: Message,
        route: Route,
        topic: str,
        qos: int,
        version: int,
        identifiers: tuple[int, ...],
        now_ms: int,
        reset: str | None = None,
    ) -> PreparedPublish:
        """The PUBLISH for ``record`` encoded once per (QoS, version, subscription ids)."""
        if self._encoders_for is not record:
            self._encoders.clear()
            self._encoders_for = record
        key = (qos, version, identifiers, reset)
        encoder = self._encoders.get(key)
        if encoder is None:
            props = EMPTY_PROPERTIES
            if version == 5:
                props = records.delivery_properties(record, route, now_ms)
                if identifiers:
                    props = replace(props, subscription_identifiers=identifiers)
                if reset is not None:  # the first delivery after a reset says so
                    props = replace(
                        props, user_properties=(*props.user_properties, (RESET_PROPERTY, reset))
                    )
            encoder = prepare_publish(
                topic, record.value or b"", qos=qos, properties=props, version=version
            )
            self._encoders[key] = encoder
        return encoder

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    # -- metrics -------------------------------------------------------------------------------

    def delivered(self, route: str, size: int) -> None:
        """One delivery to one client: summed here, counted once per flush."""
        counts = self._delivered.get(route)
        if counts is None:
            counts = self._delivered[route] = [0, 0]
        counts[0] += 1
        counts[1] += size

    def _count_deliveries(self) -> None:
        delivered, self._delivered = self._delivered, {}
        for route, (count, size) in delivered.items():
            metrics.MESSAGES_OUT.labels(route, PROTOCOL).inc(count)
            metrics.BYTES_OUT.labels(route, PROTOCOL).inc(size)

    # -- coalesced writes ----------------------------------------------------------------------

    def mark_dirty(self, client: Flushable) -> None:
        self._dirty.add(client)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def forget(self, client: Flushable) -> None:
        """The connection is gone: nothing more to write."""
        self._dirty.discard(client)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._delivered:
            self._count_deliveries()
        dirty, self._dirty = self._dirty, set()
        for client in dirty:
            client.flush()
