"""Kafka front-end: one :class:`Republisher` per route with ``[routes.kafka]``.

Standardization from Kafka sources (issue 16 item 2): a topic written by someone else's
producer, in its own shape, becomes records of a route (its transform, schema, key, dead letter
and lineage) like a publish over any other door. The route's topic is where they go; the
source's records stay as they were.
"""

from __future__ import annotations

from typing import Any

import structlog

from bridge.model.config import Route, TopicSpec
from protocols.kafka.republisher import Republisher

log = structlog.get_logger(__name__)


class KafkaFrontend:
    name = "kafka"

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge
        self.routes: list[Route] = [r for r in bridge.config.routes if r.kafka is not None]
        self.republishers: list[Republisher] = []

    def topics(self) -> list[TopicSpec]:
        # The source exists before its first record (a demo, a test): the route's group can
        # join it at once. A real cluster's existing topic is left as it is.
        return [TopicSpec(str(route.kafka["source"])) for route in self.routes if route.kafka]

    async def start(self) -> None:
        producer, _ = self.bridge.kafka
        settings = self.bridge.config.kafka
        for route in self.routes:
            republisher = Republisher(route, settings, self.bridge.bootstrap, producer)
            await republisher.start()
            self.republishers.append(republisher)
        if self.routes:
            log.info("kafka.republishing", routes=[r.name for r in self.routes])

    async def stop(self) -> None:
        for republisher in self.republishers:
            await republisher.stop()
        self.republishers.clear()
