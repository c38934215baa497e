"""Retained messages: the compacted topic ``edgebridge.mqtt.retained``, keyed by MQTT topic.

A retained PUBLISH is produced to its route's Kafka topic like any other message *and* written
here (an empty payload writes a tombstone: it clears the retained message). Every instance
follows the table, so a new subscription anywhere first gets the retained messages matching its
filter (with RETAIN set), then live messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bridge.kafka.table_store import TableStore
from bridge.model.topic_filter import filter_matches

from . import records
from .packets import Publish
from .subscriptions import Subscription, Tracker

if TYPE_CHECKING:
    from .frontend import MqttFrontend


class RetainedMessages:
    def __init__(self, frontend: MqttFrontend, topic: str) -> None:
        self.frontend = frontend
        self.topic = topic
        producer, hub = frontend.bridge.kafka
        self.table = TableStore(producer, hub, topic)

    async def open(self) -> None:
        await self.table.open()

    async def store(
        self, topic: str, publish: Publish, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        record = records.retained_record(topic, self.topic, publish, headers)
        await self.table.put(topic.encode(), record.value, record.headers)

    def replay(self, subscription: Subscription) -> int:
        """Send ``subscription`` the retained messages matching its filter; returns how many."""
        routes = self.frontend.bridge.routes.mqtt
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
            subscription.client.send_record(
                subscription, scratch, record, match.target, topic, None, track=False, retain=True
            )
            sent += 1
        return sent
