"""A route that republishes another Kafka topic (``[routes.kafka]``), on the real broker.

A plain aiokafka producer writes a provider's records in its own shape; the bridge makes each
the route's canonical record (transform, schema, key from the body) with the source's
topic/partition/offset in its headers; a record the transform cannot handle is dead-lettered and
the next one still goes through; a restarted bridge goes on from the group's committed offsets
(nothing republished twice, nothing skipped).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from harness import start_bridge
from kafka_read import read_topic

from bridge.process.runtime import Bridge

pytestmark = pytest.mark.broker

CANONICAL = {
    "type": "object",
    "required": ["match", "home", "away"],
    "properties": {"home": {"type": "number", "minimum": 1.01}},
}


def routes(p: str) -> str:
    return f"""
[[routes]]
name = "feed"
topic = "{p}-odds"
key = "{{$body.match}}"
content_type = "application/json"
schema = "canonical.json"
dead_letter = "{p}-dlq"

[routes.kafka]
source = "{p}-raw"
session_timeout_ms = 1000  # a join on the embedded broker takes about half of it

[routes.transform]
version = "3"
inbound = '''
{{"match": key, "home": 100.0 / body.h, "away": 100.0 / body.a, "feed": headers.feed}}
'''
"""


async def until(check, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    import asyncio

    for _ in range(int(timeout / 0.1)):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    return await check()


async def test_a_source_topic_is_republished_once_in_the_canonical_shape(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    (tmp_path / "canonical.json").write_text(json.dumps(CANONICAL))
    p = f"rp{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()

    async def send(
        key: bytes, value: dict[str, object], feed: bytes | None = b"acme"
    ) -> tuple[int, int]:
        headers = [("feed", feed)] if feed is not None else []
        sent = await producer.send_and_wait(
            f"{p}-raw", json.dumps(value).encode(), key=key, headers=headers
        )
        return int(sent.partition), int(sent.offset)

    async def odds() -> list:  # type: ignore[type-arg]
        return sorted(await read_topic(kafka_bootstrap, f"{p}-odds"), key=lambda r: r.key)

    bridge: Bridge | None = None
    try:
        bridge = await start_bridge(routes(p), kafka_bootstrap, ["kafka"], directory=tmp_path)
        first = await send(b"m1", {"h": 40.0, "a": 62.5})
        await send(b"m2", {"h": 40.0, "a": 62.5}, feed=None)  # no feed header: refused
        await send(b"m3", {"h": 50.0, "a": 50.0})
        found = await until(lambda: _count(odds, 2))
        assert [json.loads(r.value) for r in found] == [
            {"match": "m1", "home": 2.5, "away": 1.6, "feed": "acme"},
            {"match": "m3", "home": 2.0, "away": 2.0, "feed": "acme"},
        ]
        headers = dict(found[0].headers)
        assert found[0].key == b"m1"
        assert headers["edgebridge-source-topic"] == f"{p}-raw".encode()
        assert headers["edgebridge-source-partition"] == str(first[0]).encode()
        assert headers["edgebridge-source-offset"] == str(first[1]).encode()
        assert headers["edgebridge-protocol"] == b"kafka"
        assert headers["edgebridge-transform"] == b"3"
        [letter] = await read_topic(kafka_bootstrap, f"{p}-dlq")
        assert letter.value == json.dumps({"h": 40.0, "a": 62.5}).encode()
        assert dict(letter.headers)["edgebridge-dlq-reason"] == b"transform"
        assert b"feed" in dict(letter.headers)["edgebridge-dlq-detail"]

        # Another bridge in the same group goes on after the committed offsets.
        await bridge.stop()
        bridge = None
        await send(b"m4", {"h": 80.0, "a": 25.0})
        bridge = await start_bridge(routes(p), kafka_bootstrap, ["kafka"], directory=tmp_path)
        found = await until(lambda: _count(odds, 3))
        assert [r.key for r in found] == [b"m1", b"m3", b"m4"]
    finally:
        await producer.stop()
        if bridge is not None:
            await bridge.stop()


async def _count(read, at_least: int):  # type: ignore[no-untyped-def]
    found = await read()
    return found if len(found) >= at_least else None
