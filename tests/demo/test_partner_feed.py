"""demo/partner_feed.py against a bridge running the shipped routing.toml (its own topic names,
gRPC front-end only, on a free port): it reads the house odds over gRPC Subscribe and publishes
its prices over gRPC Produce with an idempotency-key, so a feed started afresh (whose snapshot
delivers the same house records again) writes no price twice."""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaProducer
from kafka_read import read_topic
from shipped import shipped_config as shipped

from bridge.edge.tokens import mint_token
from bridge.model.config import Config, ListenerSettings
from bridge.process.runtime import Bridge
from demo.partner_feed import PartnerFeed


def shipped_config(bootstrap: str, suffix: str) -> Config:
    """routing.toml as shipped, with topics of its own and only a gRPC listener on a free port."""
    options = {"idempotency_topic": f"ledger-{suffix}", "idempotency_session_timeout_ms": 1000}
    return shipped(
        bootstrap,
        suffix,
        mqtt_listener=None,
        http_listener=None,
        grpc_listener=ListenerSettings("127.0.0.1", 0, True, options),
    )


async def run_until(feed: PartnerFeed, bootstrap: str, topic: str, count: int) -> list:
    stop = asyncio.Event()
    task = asyncio.create_task(feed.run(stop))
    try:
        for _ in range(200):
            found = await read_topic(bootstrap, topic)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"{topic} has not {count} records")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_partner_feed_prices_each_house_record_once(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    config = shipped_config(kafka_bootstrap, suffix)
    bridge = Bridge(config, frontends=["grpc"])
    await bridge.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        address = f"127.0.0.1:{bridge.frontend('grpc').port}"
        token = mint_token(config.guard_settings, "acme-odds", ["odds-partner"])  # type: ignore[arg-type]
        house = {"match": "m-p", "odds": {"home": 2.0, "away": 1.9}, "minute": 3}
        await producer.send_and_wait(f"odds-{suffix}", json.dumps(house).encode(), key=b"m-p")
        first = await run_until(
            PartnerFeed(address, token), kafka_bootstrap, f"partner-odds-{suffix}", 1
        )
        assert json.loads(first[0].value) == {
            "match": "m-p",
            "home": 1.94,
            "away": 1.84,
            "minute": 3,
            "partner": "acme-odds",
        }
        assert first[0].key == b"m-p"
        # A new house record, and a feed that starts afresh: its snapshot holds the newest
        # record per match (m-p's new one) plus nothing else, so one more price; a second fresh
        # feed sees the same record again and its retry with the same key writes nothing.
        newer = {**house, "odds": {"home": 3.0, "away": 1.4}, "minute": 4}
        await producer.send_and_wait(f"odds-{suffix}", json.dumps(newer).encode(), key=b"m-p")
        await run_until(PartnerFeed(address, token), kafka_bootstrap, f"partner-odds-{suffix}", 2)
        again = PartnerFeed(address, token)
        stop = asyncio.Event()
        task = asyncio.create_task(again.run(stop))
        for _ in range(200):
            if again.published:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)
        assert again.published == 1  # answered (the stored reply) ...
        found = await read_topic(kafka_bootstrap, f"partner-odds-{suffix}")
        assert len(found) == 2  # ... but not written again
    finally:
        await producer.stop()
        await bridge.stop()
