"""One route republishing a source topic: read in the route's consumer group, admit each record
(the route's transform and schemas), produce, then commit (bridge/kafka/group_reader.py).

At least once: the group's offsets are committed after every record of a fetched batch was
acknowledged (or refused and dead-lettered), so a bridge that dies in between republishes that
batch again when the group moves on. A republished record says where it came from
(``edgebridge-source-topic``, ``-partition``, ``-offset``), so a consumer can drop such a repeat
by those three. A record the route refuses (source schema, transform, canonical schema, a key
that cannot be built) goes to the route's dead letter as a refused publish does, and the
republishing goes on: one bad record never stops a source.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from bridge.edge.dead_letters import reject_payload
from bridge.edge.record_builder import UnroutableMessage, build_message, resolver
from bridge.edge.transform import Caller, TransformFailed, admit
from bridge.edge.validation import InvalidPayload
from bridge.kafka.group_reader import GroupReader
from bridge.kafka.producer import Producer
from bridge.model.config import KafkaSettings, Route
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message, Origin
from bridge.telemetry import metrics

log = structlog.get_logger(__name__)

PROTOCOL = "kafka"
SOURCE_TOPIC = "edgebridge-source-topic"
SOURCE_PARTITION = "edgebridge-source-partition"
SOURCE_OFFSET = "edgebridge-source-offset"


class Republisher:
    def __init__(
        self, route: Route, settings: KafkaSettings, bootstrap: str, producer: Producer
    ) -> None:
        assert route.kafka is not None
        self.route = route
        self.source = str(route.kafka["source"])
        self.group = str(route.kafka.get("group") or f"edgebridge-republish-{route.name}")
        self.producer = producer
        self.reader = GroupReader(
            settings,
            bootstrap,
            self.source,
            self.group,
            self._republish,
            start=str(route.kafka.get("start", "earliest")),
            role=f"republish-{route.name}",
            session_timeout_ms=int(route.kafka.get("session_timeout_ms", 3000)),
        )
        self.republished = 0
        self.refused = 0
        self._inbound = metrics.Inbound(route.name, PROTOCOL)

    async def start(self) -> None:
        await self.reader.start()

    async def stop(self) -> None:
        await self.reader.stop()

    async def _republish(self, records: list[Message]) -> None:
        """Every record of one partition's batch produced (in order) or refused."""
        futures: list[asyncio.Future[Any]] = []
        sizes: list[int] = []
        for record in records:
            message = await self._message(record)
            if message is not None:
                futures.append(await self.producer.submit(message, self.route.acks or None))
                sizes.append(len(message.value or b""))
        if futures:
            done = await asyncio.gather(*futures, return_exceptions=True)
            failed = next((d for d in done if isinstance(d, BaseException)), None)
            if failed is not None:
                raise KafkaUnavailable(f"Kafka did not acknowledge: {failed!r}")
            self.republished += len(futures)
            for size in sizes:
                self._inbound.add(size)

    async def _message(self, record: Message) -> Message | None:
        """The route's record for a source record, or None: refused (and dead-lettered)."""
        route = self.route
        origin = Origin(PROTOCOL, client_id=self.group, remote_address=self.source)
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        address = f"{self.source}/{record.partition}/{record.offset}"
        lineage = [
            (SOURCE_TOPIC, self.source.encode()),
            (SOURCE_PARTITION, str(record.partition).encode()),
            (SOURCE_OFFSET, str(record.offset).encode()),
        ]
        headers = {name: value.decode("utf-8", "replace") for name, value in record.headers}
        try:
            admitted = admit(route, record.value, None, Caller(headers=headers, key=key))
            return build_message(
                route,
                {},
                admitted.value,
                origin,
                resolver(origin, self.source, admitted.document, {"$key": key}),
                lineage if route.audit.enabled else (),
            )
        except (InvalidPayload, TransformFailed, UnroutableMessage) as exc:
            self.refused += 1
            log.info(
                "kafka.republish_refused",
                route=route.name,
                source=address,
                reason=str(exc)[:200],
            )
            await reject_payload(self.producer, route, record.value, origin, exc, address)
            return None
