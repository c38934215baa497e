"""Reading a topic in a consumer group, one partition's batch at a time, committing after each.

For work that must survive the process (a route republishing another topic: protocols/kafka):
the group keeps the progress in Kafka, so any instance goes on where another stopped, and a
batch is committed only once ``handle`` returned. If ``handle`` raises
:class:`~bridge.model.errors.KafkaUnavailable`, the partition is read again from the batch's first
record after a pause: at least once, never a silent skip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from bridge.kafka.client_settings import client_options, to_message
from bridge.model.config import KafkaSettings
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message

log = structlog.get_logger(__name__)

RETRY_S = 1.0
BATCH = 500

Handler = Callable[[list[Message]], Awaitable[None]]


class GroupReader:
    def __init__(
        self,
        settings: KafkaSettings,
        bootstrap: str,
        topic: str,
        group: str,
        handle: Handler,
        start: str = "earliest",
        role: str = "group-reader",
        session_timeout_ms: int = 3000,
    ) -> None:
        self.topic = topic
        self.group = group
        self.handle = handle
        self.consumer = AIOKafkaConsumer(
            topic,
            **{
                **client_options(settings, bootstrap, role),
                "group_id": group,
                "enable_auto_commit": False,
                "auto_offset_reset": start,
                "fetch_max_wait_ms": settings.fetch_max_wait_ms,
                # A join waits up to the session timeout on some brokers (Tansu): keep it short,
                # so a new or restarted instance starts work in seconds.
                "session_timeout_ms": session_timeout_ms,
                "heartbeat_interval_ms": max(session_timeout_ms // 4, 100),
            },
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await self.consumer.start()
        except KafkaError as exc:
            raise KafkaUnavailable(
                f"cannot join group {self.group} on {self.topic}: {exc}"
            ) from exc
        self._task = asyncio.create_task(self._run(), name=f"group-{self.group}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(KafkaError, OSError):
            await self.consumer.stop()

    async def _run(self) -> None:
        while True:
            try:
                batches = await self.consumer.getmany(timeout_ms=500, max_records=BATCH)
            except KafkaError as exc:
                log.warning("kafka.group_fetch_failed", group=self.group, error=str(exc))
                await asyncio.sleep(RETRY_S)
                continue
            for tp, records in batches.items():
                try:
                    await self.handle([to_message(r) for r in records])
                    await self.consumer.commit({tp: records[-1].offset + 1})
                except (KafkaUnavailable, KafkaError) as exc:
                    # Nothing after the last commit is known to be done: read it again.
                    log.warning(
                        "kafka.group_batch_failed",
                        group=self.group,
                        topic=tp.topic,
                        partition=tp.partition,
                        offset=records[0].offset,
                        error=str(exc),
                    )
                    self.consumer.seek(tp, records[0].offset)
                    await asyncio.sleep(RETRY_S)
