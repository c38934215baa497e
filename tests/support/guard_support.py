"""Helpers for the guard/governance tests that drive every front-end with real clients."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from sse_support import EventParser

# The MQTT tests' real paho-mqtt client (one implementation, not two).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "protocols" / "mqtt"))
from mqtt_support import Paho

__all__ = ["Paho", "SseStream", "read_records", "read_topic"]


async def read_records(
    bootstrap: str, topic: str, expect: int, settle_s: float = 1.5
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record in ``topic``: wait for ``expect`` records, then a little longer for strays."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 20
        settled_at: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            found += [r for records in batches.values() for r in records]
            if len(found) >= expect:
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle_s:
                    break
    finally:
        await consumer.stop()
    return found


async def read_topic(bootstrap: str, topic: str, expect: int, settle_s: float = 1.5) -> list[bytes]:
    """The values of :func:`read_records`."""
    return [r.value for r in await read_records(bootstrap, topic, expect, settle_s)]


class SseStream:
    """A real SSE stream over httpx, read in the background."""

    def __init__(self, client: httpx.AsyncClient, url: str, bearer: str | None) -> None:
        self.headers = {"Accept": "text/event-stream"}
        if bearer is not None:
            self.headers["Authorization"] = f"Bearer {bearer}"
        self.client, self.url = client, url
        self.status: asyncio.Future[httpx.Response] = asyncio.get_running_loop().create_future()
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.ended = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        parser = EventParser()
        try:
            async with self.client.stream("GET", self.url, headers=self.headers) as response:
                if response.status_code != 200:
                    await response.aread()
                self.status.set_result(response)
                if response.status_code == 200:
                    async for chunk in response.aiter_raw():
                        for event in parser.feed(chunk):
                            self.events.put_nowait(event)
        except httpx.HTTPError as exc:
            if not self.status.done():
                self.status.set_exception(exc)
        finally:
            self.ended.set()

    async def response(self) -> httpx.Response:
        return await asyncio.wait_for(self.status, 15)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
