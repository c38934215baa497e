"""Request-reply over MCP, with the SDK's client against a real bridge on the embedded broker: a
publish tool of a route with a reply topic produces the request and waits (bounded) for the
answering service's reply, matched by correlation id, through the shared ReplyFollower."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from harness import start_bridge
from kafka_read import read_topic
from mcp_support import GUARD, kafka_producer, mcp_session, result_json, token

from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
async def names(kafka_bootstrap: str) -> dict[str, str]:
    names = {k: f"mcp-rr-{k}-{uuid.uuid4().hex[:8]}" for k in ("requests", "replies", "slow")}
    settings = KafkaSettings(bootstrap="external", request_timeout_ms=5000)
    await ensure_topics(settings, kafka_bootstrap, [TopicSpec(n, 1) for n in names.values()])
    return names


@pytest.fixture(scope="module")
async def bridge(kafka_bootstrap: str, names):
    routes = GUARD + "".join(
        f"""
[[routes]]
name = "{name}"
topic = "{topic}"
key = "{{$identity}}"
content_type = "application/json"

[routes.http]
method = "POST"
path = "/{name}"
reply_topic = "{names["replies"]}"
reply_wait_s = {wait}
idempotency = "off"

[routes.access]
publish = ["bettor"]
"""
        for name, topic, wait in (
            ("quote", names["requests"], 10),
            ("slow-quote", names["slow"], 0.3),
        )
    )
    started = await start_bridge(routes, kafka_bootstrap, ["mcp"])
    yield started
    await started.stop()


@contextlib.asynccontextmanager
async def answering_service(bootstrap: str, requests: str, replies: str):
    """A service that answers each request on its reply-to topic, as the contract says."""
    consumer = AIOKafkaConsumer(
        requests, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=10
    )
    await consumer.start()

    async def serve() -> None:
        async with kafka_producer(bootstrap) as producer:
            async for record in consumer:
                headers = dict(record.headers)
                assert headers["reply-to"] == replies.encode()
                price = {"price": json.loads(record.value)["stake"] * 2}
                await producer.send_and_wait(
                    replies,
                    json.dumps(price).encode(),
                    headers=[("correlation-id", headers["correlation-id"]), (":status", b"201")],
                )

    task = asyncio.create_task(serve())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


def url_of(bridge) -> str:
    return f"http://127.0.0.1:{bridge.web.port}/mcp"


async def test_a_publish_on_a_request_reply_route_returns_the_reply(
    bridge, names, kafka_bootstrap
) -> None:
    async with (
        answering_service(kafka_bootstrap, names["requests"], names["replies"]),
        mcp_session(url_of(bridge), token(bridge.config, "alice", "bettor")) as session,
    ):
        result = await session.call_tool("publish_quote", {"value": {"stake": 4}})
    assert not result.is_error, result
    document = result_json(result)
    assert document["reply"] == {"status": 201, "value": {"price": 8}, "headers": {}}
    [request] = await read_topic(kafka_bootstrap, names["requests"])
    assert dict(request.headers)["correlation-id"] == document["correlation_id"].encode()


async def test_without_a_reply_in_time_the_call_ends_with_the_request_sent(
    bridge, names, kafka_bootstrap
) -> None:
    async with mcp_session(url_of(bridge), token(bridge.config, "alice", "bettor")) as session:
        result = await session.call_tool("publish_slow-quote", {"value": {"stake": 1}})
    assert not result.is_error, result
    document = result_json(result)
    assert document["reply"] is None and "0.3 s" in document["reply_pending"]
    assert len(await read_topic(kafka_bootstrap, names["slow"])) == 1
