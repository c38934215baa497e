"""Jurisdiction on MCP, with the SDK's client against a real bridge on the embedded broker: a
caller whose region may not read or publish a product never sees its tools or resources, a call
is refused with a tool error and produces nothing, and a ``local`` product's reader gets only
its own region's records."""

from __future__ import annotations

import json
import uuid

import pytest
from harness import start_bridge
from kafka_read import read_topic
from mcp_support import GUARD, kafka_producer, mcp_session, result_json

from bridge.edge.tokens import mint_token
from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
async def topic(kafka_bootstrap: str) -> str:
    name = f"mcp-gb-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap="external", request_timeout_ms=5000)
    await ensure_topics(settings, kafka_bootstrap, [TopicSpec(name, 1, 1, True)])
    return name


@pytest.fixture(scope="module")
async def bridge(kafka_bootstrap: str, topic: str):
    routes = (
        GUARD
        + 'region_claim = "country"\n'
        + f"""
[kafka.topics.{topic}]
partitions = 1
compact = true

[[routes]]
name = "in-play-gb"
topic = "{topic}"
key = "{{match}}"
content_type = "application/json"

[routes.mqtt]
topic = "in-play/{{match}}"

[routes.access]
publish = ["trader"]
subscribe = ["authenticated"]

[routes.jurisdiction]
publish = ["gb"]
read = ["gb", "ie"]
local = true
"""
    )
    started = await start_bridge(routes, kafka_bootstrap, ["mcp"], http_options='region = "gb"')
    yield started
    await started.stop()


def bearer(bridge, subject: str, country: str | None) -> str:
    claims = {"country": country} if country else None
    return mint_token(bridge.config.guard_settings, subject, ("trader",), extra_claims=claims)


def url_of(bridge) -> str:
    return f"http://127.0.0.1:{bridge.web.port}/mcp"


async def test_a_caller_from_a_refused_region_never_sees_the_product(
    bridge, topic, kafka_bootstrap
) -> None:
    async with mcp_session(url_of(bridge), bearer(bridge, "pierre", "fr")) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        resources = {str(r.uri) for r in (await session.list_resources()).resources}
        refused = await session.call_tool(
            "publish_in-play-gb", {"match": "m1", "value": {"home": 2}}
        )
        listed = result_json(await session.call_tool("list_products", {}))
    assert tools == {"list_products", "describe_product"}
    assert resources == set()
    assert listed["products"] == []
    assert refused.is_error and result_json(refused)["error"] == "unknown-tool"
    assert await read_topic(kafka_bootstrap, topic) == []


async def test_a_reader_only_region_may_read_but_not_publish(bridge) -> None:
    async with mcp_session(url_of(bridge), bearer(bridge, "niamh", "ie")) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
    assert "read_in-play-gb" in tools and "read_latest_in-play-gb" in tools
    assert "publish_in-play-gb" not in tools


async def test_a_publish_is_tagged_and_a_local_reader_sees_only_its_region(
    bridge, topic, kafka_bootstrap
) -> None:
    match = f"m-{uuid.uuid4().hex[:6]}"
    async with kafka_producer(kafka_bootstrap) as producer:
        # Written in Ireland by another region's bridge: stays in Ireland.
        await producer.send_and_wait(
            topic,
            json.dumps({"home": 9.0}).encode(),
            key=match.encode(),
            headers=[("edgebridge-region", b"ie")],
        )
    async with mcp_session(url_of(bridge), bearer(bridge, "alice", "gb")) as session:
        placed = await session.call_tool(
            "publish_in-play-gb", {"match": match, "value": {"home": 1.5}}
        )
        assert not placed.is_error, placed
        read = result_json(await session.call_tool("read_in-play-gb", {"match": match}))
    assert [r["value"] for r in read["records"]] == [{"home": 1.5}]
    mine = [r for r in await read_topic(kafka_bootstrap, topic) if r.key == match.encode()]
    assert dict(mine[-1].headers)["edgebridge-region"] == b"gb"
    async with mcp_session(url_of(bridge), bearer(bridge, "niamh", "ie")) as session:
        irish = result_json(await session.call_tool("read_in-play-gb", {"match": match}))
    assert [r["value"] for r in irish["records"]] == [{"home": 9.0}]


async def test_a_caller_without_a_region_claim_is_from_the_listeners_region(bridge) -> None:
    async with mcp_session(url_of(bridge), bearer(bridge, "tom", None)) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
    assert "publish_in-play-gb" in tools  # [listeners.http] region = "gb"
