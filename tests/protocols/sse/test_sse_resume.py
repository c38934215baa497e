"""Exact resume while connections die: real clients, records produced all along, and the received
sequence must be exactly the produced one (no gap, no duplicate) — across dropped streams, cut
TCP connections, two bridge instances and a bridge restart."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp_sse_client.client import EventSource
from harness import BridgeProcess, config_text, free_port
from sse_support import KillingProxy, ResumingReader, base_url, produce, stream_port, until

from bridge.kafka.producer import Producer
from bridge.model.config import KafkaSettings
from bridge.model.message import Message

COUNT = 150


def routes(topic: str) -> str:
    return f"""
[[routes]]
name = "odds"
topic = "{topic}"
key = "{{match}}"

[routes.sse]
path = "/matches/{{match}}/odds"
event = "odds"
retry_ms = 20

[[routes]]
name = "everything"
topic = "{topic}"

[routes.sse]
path = "/all"
retry_ms = 20
"""


async def produce_slowly(send, values: list[str], pause: float = 0.005) -> None:
    for value in values:
        await send(value)
        await asyncio.sleep(pause)


async def repeatedly(action, times: int, pause: float) -> int:
    done = 0
    for _ in range(times):
        await asyncio.sleep(pause)
        done += 1 if action() else 0
    return done


async def test_aiohttp_sse_client_resumes_exactly_through_dropped_streams(
    bridge_factory, new_topic
) -> None:
    topic = await new_topic(partitions=3)
    bridge = await bridge_factory(routes(topic), frontends=["sse"])
    frontend = bridge.frontend("sse")
    expected = [f"odds-{i}" for i in range(COUNT)]
    received: list[str] = []
    opened = asyncio.Event()

    async def read() -> None:
        async with EventSource(
            f"{base_url(bridge)}/matches/42/odds",
            reconnection_time=timedelta(milliseconds=20),
            on_open=opened.set,
        ) as source:
            async for event in source:
                assert event.type == "odds"
                received.append(event.data)
                if len(received) >= COUNT:
                    return

    reader = asyncio.create_task(read())
    await asyncio.wait_for(opened.wait(), 10)
    dropper = asyncio.create_task(repeatedly(frontend.drop_streams, 8, 0.08))
    await produce_slowly(lambda v: produce(bridge, topic, [v], key="42"), expected)
    drops = await dropper
    await asyncio.wait_for(reader, 30)
    assert received == expected
    assert drops >= 5, "the stream must really have been dropped several times"
    assert frontend.metrics.resumed >= drops


async def test_cut_tcp_connections_lose_and_repeat_nothing(bridge_factory, new_topic) -> None:
    topic = await new_topic(partitions=3)
    bridge = await bridge_factory(routes(topic), frontends=["sse"])
    proxy = await KillingProxy(stream_port(bridge)).start()
    try:
        reader = ResumingReader([f"http://127.0.0.1:{proxy.port}/all"])
        reading = asyncio.create_task(reader.read(COUNT))
        await until(lambda: reader.connects > 0)
        keys = ["a", "b", "c", "d"]
        expected = [f"{keys[i % 4]}-{i}" for i in range(COUNT)]
        killer = asyncio.create_task(repeatedly(proxy.kill_all, 8, 0.07))
        await produce_slowly(lambda v: produce(bridge, topic, [v], key=v[0]), expected)
        await killer
        events = await reading
    finally:
        await proxy.stop()
    got = [e.data for e in events]
    # Three partitions: order is only defined per key (per partition); nothing lost or repeated.
    assert sorted(got) == sorted(expected)
    for key in keys:
        assert [v for v in got if v[0] == key] == [v for v in expected if v[0] == key]
    # Killed several times while records flowed, each time resumed by id.
    assert proxy.kills >= 5 and reader.connects >= 4
    assert bridge.frontend("sse").metrics.resumed >= 3


async def test_resume_on_another_instance(bridge_factory, new_topic) -> None:
    topic = await new_topic(partitions=3)
    first = await bridge_factory(routes(topic), frontends=["sse"])
    second = await bridge_factory(routes(topic), frontends=["sse"])
    # Every reconnection lands on the other instance.
    reader = ResumingReader([f"{base_url(b)}/matches/9/odds" for b in (first, second)])
    reading = asyncio.create_task(reader.read(COUNT))
    await until(lambda: reader.connects > 0)

    def drop_both() -> bool:
        return bool(first.frontend("sse").drop_streams() + second.frontend("sse").drop_streams())

    expected = [f"v{i}" for i in range(COUNT)]
    dropper = asyncio.create_task(repeatedly(drop_both, 8, 0.07))
    await produce_slowly(lambda v: produce(first, topic, [v], key="9"), expected)
    await dropper
    events = await reading
    assert [e.data for e in events] == expected
    assert reader.connects >= 4
    assert (
        first.frontend("sse").metrics.resumed >= 2 and second.frontend("sse").metrics.resumed >= 2
    )


@pytest.fixture
async def kafka_producer(kafka_bootstrap: str, kafka_settings: KafkaSettings):
    producer = Producer(kafka_settings, kafka_bootstrap)
    await producer.start()
    yield producer
    await producer.stop()


async def test_resume_across_a_bridge_restart(
    kafka_bootstrap, new_topic, kafka_producer, tmp_path: Path
) -> None:
    topic = await new_topic(partitions=3)
    port = free_port()
    config = tmp_path / "routing.toml"
    config.write_text(config_text(routes(topic), http_port=port))
    bridge = await BridgeProcess(config, kafka_bootstrap).astart(wait_port=port)
    restarted: BridgeProcess | None = None
    try:
        reader = ResumingReader([f"http://127.0.0.1:{port}/matches/5/odds"])
        reading = asyncio.create_task(reader.read(COUNT, timeout=90))
        await until(lambda: reader.connects > 0)
        expected = [f"r{i}" for i in range(COUNT)]

        async def send(value: str) -> None:
            await kafka_producer.send(Message(topic, b"5", value.encode()))

        await produce_slowly(send, expected[:50])
        await asyncio.to_thread(bridge.stop)  # SIGTERM: streams end, the process exits
        await produce_slowly(send, expected[50:100])  # produced while no bridge runs
        restarted = await BridgeProcess(config, kafka_bootstrap).astart(wait_port=port)
        await produce_slowly(send, expected[100:])
        events = await reading
        assert [e.data for e in events] == expected
        assert reader.connects >= 2
    finally:
        with contextlib.suppress(Exception):
            bridge.stop()
        if restarted is not None:
            restarted.stop()
