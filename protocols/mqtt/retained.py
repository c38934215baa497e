"""Retained messages: the compacted topic ``edgebridge.mqtt.retained``, keyed by MQTT topic.

A retained PUBLISH is produced to its route's Kafka topic like any other message *and* to this
table (an empty payload writes a tombstone: it clears the retained message), both by
:mod:`.ingest`, in the same turn. Every instance follows the table, so a new subscription
anywhere first gets the retained messages matching its filter (with RETAIN set), then live
messages.

The publishing connection does not wait for this instance to read its record back (its next
packet would wait behind it); a SUBSCRIBE on this instance does, through :meth:`settled`, so a
subscriber still sees every retained message acknowledged (or, at QoS 0, received) before it
subscribed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.model.routing import RouteTable
from bridge.model.topic_filter import filter_matches

from .ports import ReadBack, Table
from .subscriptions import Subscription, Tracker

READ_BACK_S = 10.0


class RetainedMessages:
    def __init__(self, table: Table, feed: ReadBack, topic: str, routes: RouteTable) -> None:
        self.table = table
        self.feed = feed
        self.topic = topic
        self.routes = routes
        self._pending: set[asyncio.Future[Any]] = set()  # submitted, not yet acknowledged
        self._written: dict[int, int] = {}  # partition -> next offset, of what we wrote

    def written(self, produced: asyncio.Future[Any]) -> None:
        """A retained record was submitted (by :mod:`.ingest`); ``produced`` is Kafka's
        acknowledgement (record metadata with ``partition`` and ``offset``)."""
        self._pending.add(produced)
        produced.add_done_callback(self._acknowledged)

    def _acknowledged(self, produced: asyncio.Future[Any]) -> None:
        self._pending.discard(produced)
        if produced.cancelled() or produced.exception() is not None:
            return  # not written: the publisher is not acknowledged either
        metadata = produced.result()
        partition, after = metadata.partition, metadata.offset + 1
        if after > self._written.get(partition, 0):
            self._written[partition] = after

    async def settled(self) -> None:
        """Return once this instance's table holds every retained record this instance
        submitted before the call (those Kafka refused are skipped)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=READ_BACK_S)
        if self._written:
            await self.feed.wait_for(dict(self._written), READ_BACK_S)

    def replay(self, subscription: Subscription) -> int:
        """Send ``subscription`` the retained messages matching its filter; returns how many."""
        routes = self.routes.mqtt
        sent = 0
        scratch = Tracker()
        for key, record in self.table.items():
            if key is None or record.value is None:
                continue
            topic = key.decode("utf-8", "replace")
            if not filter_matches(subscription.topic_filter, topic):
                continue
            match = routes.match(topic)
            if match is None or not subscription.accepts(match.target, topic, record):
                continue
            # The subscription's filter and region (issue 16) hold for retained messages too.
            record_filter = subscription.record_filters.get(match.target.topic)
            if record_filter is not None and not record_filter.matches_record(record):
                continue
            subscription.client.send_record(
                subscription, scratch, record, match.target, topic, None, track=False, retain=True
            )
            sent += 1
        return sent
