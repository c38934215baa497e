"""Route transformations on a real bridge over the embedded broker, with real clients.

One route normalises a provider's shape (percentages, its own field names) into a canonical odds
record: published over MQTT (paho), HTTP (httpx) and gRPC (grpcio), read back with a plain
aiokafka consumer: the exact canonical value and the lineage headers. Payloads the transform
cannot handle are refused in each protocol's own terms (MQTT 0x83, HTTP 422 problem+json, gRPC
INVALID_ARGUMENT), dead-lettered with the reason, and never produced. Outbound, an anonymous
reader gets the masked and trimmed view over SSE, HTTP fetch, MQTT and gRPC Subscribe, and a
trader the whole record.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from grpc_support import BridgeClient, records
from harness import REPO, start_bridge
from kafka_read import read_topic
from mcp_support import mcp_session, result_json

from bridge.edge.tokens import mint_token
from bridge.process.runtime import Bridge

sys.path.insert(0, str(REPO / "tests" / "protocols" / "mqtt"))
from mqtt_support import Paho

pytestmark = pytest.mark.broker

SECRET = "transform-test-secret-transform-test-0123456"
SOURCE = {
    "type": "object",
    "required": ["home_pct", "away_pct", "feed_seq"],
    "properties": {
        "home_pct": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        "away_pct": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        "feed_seq": {"type": "integer"},
    },
}
CANONICAL = {
    "type": "object",
    "required": ["match", "home", "away"],
    "properties": {
        "match": {"type": "string"},
        "home": {"type": "number", "minimum": 1.01},
        "away": {"type": "number", "minimum": 1.01},
    },
}


def routes(p: str) -> str:
    return f"""
[guard]
secret = "{SECRET}"

[listeners.grpc]
host = "127.0.0.1"
port = 0

[kafka.topics.{p}-odds]
partitions = 1

[[routes]]
name = "provider"
topic = "{p}-odds"
key = "{{fixture}}"
content_type = "application/json"
schema = "canonical.json"
dead_letter = "{p}-dlq"

[routes.mqtt]
topic = "{p}/prov/{{fixture}}"

[[routes.http]]
method = "POST"
path = "/{p}/prov/{{fixture}}"
idempotency = "off"

[[routes.http]]
method = "GET"
path = "/{p}/odds/{{fixture}}"

[routes.sse]
path = "/{p}/odds"
start = "earliest"

[routes.grpc]
start = "earliest"

[routes.transform]
version = "2.0.1"
source_schema = "source.json"
inbound = '''
{{
  "match": params.fixture,
  "home": 100.0 / body.home_pct,
  "away": 100.0 / body.away_pct,
  "by": identity,
  "desk": "desk" in headers ? headers.desk : "none",
  "key": key,
  "seq": body.feed_seq
}}
'''

[[routes.transform.outbound]]
roles = ["trader"]

[[routes.transform.outbound]]
roles = ["anonymous"]
mask = ["/by"]
remove = ["/seq"]

[routes.access]
publish = ["provider"]
subscribe = ["anonymous"]
"""


@dataclass
class Env:
    bridge: Bridge
    p: str
    bootstrap: str
    grpc: BridgeClient

    def token(self, sub: str, *roles: str) -> str:
        assert self.bridge.config.guard_settings is not None
        return mint_token(self.bridge.config.guard_settings, sub, roles)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.bridge.web.port}"

    @property
    def mqtt_port(self) -> int:
        return int(self.bridge.frontend("mqtt").port)

    async def topic(self, suffix: str) -> list[Any]:
        return await read_topic(self.bootstrap, f"{self.p}-{suffix}")


@pytest.fixture(scope="module")
async def env(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    directory = tmp_path_factory.mktemp("transform")
    (directory / "source.json").write_text(json.dumps(SOURCE))
    (directory / "canonical.json").write_text(json.dumps(CANONICAL))
    p = f"tx{uuid.uuid4().hex[:8]}"
    bridge = await start_bridge(
        routes(p), kafka_bootstrap, ["mqtt", "http", "sse", "grpc", "mcp"], directory=directory
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{bridge.frontend('grpc').port}")
    try:
        yield Env(bridge, p, kafka_bootstrap, BridgeClient(channel))
    finally:
        await channel.close()
        await bridge.stop()


def record(match: str, home: float, away: float, by: str, desk: str) -> dict[str, Any]:
    """The canonical record the route's transform makes (the key is the address's fixture)."""
    return {"match": match, "home": home, "away": away, "by": by, "desk": desk, "key": match}


def price(home: Any, away: Any, seq: int = 7) -> bytes:
    return json.dumps({"home_pct": home, "away_pct": away, "feed_seq": seq}).encode()


async def published(env: Env, payload: bytes, fixture: str, **props: Any) -> int:
    client = Paho(env.mqtt_port, f"prov-{uuid.uuid4().hex[:6]}")
    await client.connect(auth=("acme", env.token("acme", "provider")))
    try:
        return await client.publish(f"{env.p}/prov/{fixture}", payload, qos=1, **props)
    finally:
        await client.close()


# -- inbound -----------------------------------------------------------------------------------


async def test_each_protocol_produces_the_canonical_record_with_its_lineage(env: Env) -> None:
    assert await published(env, price(40.0, 62.5, 1), "m1", UserProperty=[("desk", "eu")]) == 0
    async with httpx.AsyncClient(base_url=env.http) as http:
        sent = await http.post(
            f"/{env.p}/prov/m2",
            content=price(50.0, 50.0, 2),
            headers={
                "content-type": "application/json",
                "authorization": f"Bearer {env.token('bolt', 'provider')}",
                "desk": "us",
            },
        )
    assert sent.status_code == 202, sent.text
    reply = await env.grpc.produce(
        "provider", price(80.0, 25.0, 3), {"fixture": "m3"}, token=env.token("cog", "provider")
    )
    assert reply.topic == f"{env.p}-odds"

    stored = {r.key: r for r in await env.topic("odds")}
    assert {k: json.loads(r.value) for k, r in stored.items()} == {
        b"m1": {**record("m1", 2.5, 1.6, "acme", "eu"), "seq": 1},
        b"m2": {**record("m2", 2.0, 2.0, "bolt", "us"), "seq": 2},
        b"m3": {**record("m3", 1.25, 4.0, "cog", "none"), "seq": 3},
    }
    for stored_record in stored.values():
        headers = dict(stored_record.headers)
        assert headers["edgebridge-transform"] == b"2.0.1"
        assert headers["edgebridge-source-schema"] == b"source.json"
        assert headers["edgebridge-schema"] == b"canonical.json"
        assert headers["content-type"] == b"application/json"
    protocols = sorted(dict(r.headers)["edgebridge-protocol"] for r in stored.values())
    assert protocols == [b"grpc", b"http", b"mqtt"]


async def test_what_the_transform_cannot_handle_is_refused_in_each_protocol_and_dead_lettered(
    env: Env,
) -> None:
    before = len(await env.topic("odds"))
    # An integer where the expression divides a double: CEL does not coerce.
    assert await published(env, price(40, 62.5), "bad1") == 0x83
    # A valid source whose canonical record breaks the route's schema (home 1.005 < 1.01).
    assert await published(env, price(99.5, 50.0), "bad2") == 0x83
    # The provider's own shape is wrong: the source schema refuses it, as any schema would.
    assert await published(env, b'{"home_pct": 40.0}', "bad3") == 0x99
    async with httpx.AsyncClient(base_url=env.http) as http:
        refused = await http.post(
            f"/{env.p}/prov/bad4",
            content=price(40, 62.5),
            headers={
                "content-type": "application/json",
                "authorization": f"Bearer {env.token('bolt', 'provider')}",
            },
        )
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"].endswith("transform-failed")
    assert "float / int" in problem["detail"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.grpc.produce(
            "provider", price(99.5, 50.0), {"fixture": "bad5"}, token=env.token("cog", "provider")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "transform-failed" in caught.value.details() or "schema" in caught.value.details()

    assert len(await env.topic("odds")) == before  # nothing produced
    letters = await env.topic("dlq")
    kinds = sorted(dict(r.headers)["edgebridge-dlq-reason"] for r in letters)
    assert kinds == [b"schema", b"transform", b"transform", b"transform", b"transform"]
    # The dead letter keeps what was sent, and says why: the pointer of the canonical record.
    bad2 = next(
        r
        for r in letters
        if dict(r.headers).get("edgebridge-dlq-address") == f"{env.p}/prov/bad2".encode()
    )
    assert bad2.value == price(99.5, 50.0)
    violations = json.loads(dict(bad2.headers)["edgebridge-dlq-violations"])
    assert [v["pointer"] for v in violations] == ["/home"]
    assert b"does not match the route's schema" in dict(bad2.headers)["edgebridge-dlq-detail"]


# -- outbound ----------------------------------------------------------------------------------

MASKED = {**record("v1", 2.5, 1.6, "***", "none")}
WHOLE = {**MASKED, "by": "acme", "seq": 9}


async def sse_events(url: str, count: int, token: str | None = None) -> list[Any]:
    headers = {"accept": "text/event-stream"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    found: list[Any] = []
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                found.append(json.loads(line[5:]))
                if len(found) >= count:
                    return found
    return found


async def test_each_reader_gets_the_view_of_its_role(env: Env) -> None:
    watcher = Paho(env.mqtt_port, f"watch-{uuid.uuid4().hex[:6]}")
    await watcher.connect()
    await watcher.subscribe(f"{env.p}/prov/v1", qos=1)
    assert await published(env, price(40.0, 62.5, 9), "v1") == 0
    over_mqtt = json.loads((await watcher.get()).payload)
    await watcher.close()
    assert over_mqtt == MASKED

    trader = env.token("tess", "trader")
    async with httpx.AsyncClient(base_url=env.http) as http:
        anonymous = await http.get(f"/{env.p}/odds/v1")
        whole = await http.get(f"/{env.p}/odds/v1", headers={"authorization": f"Bearer {trader}"})
    assert anonymous.status_code == 200 and anonymous.json() == MASKED
    assert whole.status_code == 200 and whole.json() == WHOLE
    assert anonymous.headers["vary"] == whole.headers["vary"] == "authorization"

    url = f"{env.http}/{env.p}/odds"
    total = len(await env.topic("odds"))
    seen = await sse_events(url, total)
    assert [e for e in seen if e["match"] == "v1"] == [MASKED]
    assert all("seq" not in e and e["by"] == "***" for e in seen)
    as_trader = await sse_events(url, total, trader)
    assert [e for e in as_trader if e["match"] == "v1"] == [WHOLE]

    call = env.grpc.subscribe("provider", {"fixture": "v1"})
    [event] = await asyncio.wait_for(records(call, 1), 10)
    call.cancel()
    assert json.loads(event.value) == MASKED


async def test_an_agent_publishes_the_source_shape_and_reads_its_view_over_mcp(env: Env) -> None:
    url = f"{env.http}/mcp"
    async with mcp_session(url, env.token("acme", "provider")) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        # The publish tool asks for what a provider sends (the source schema), not the
        # canonical record the transform makes of it.
        value_schema = tools["publish_provider"].input_schema["properties"]["value"]
        assert value_schema["required"] == SOURCE["required"]
        done = await session.call_tool(
            "publish_provider", {"fixture": "a1", "value": json.loads(price(40.0, 62.5, 11))}
        )
        assert not done.is_error, result_json(done)
        failed = await session.call_tool(
            "publish_provider", {"fixture": "a2", "value": json.loads(price(40, 62.5, 12))}
        )
        assert failed.is_error
        assert result_json(failed)["error"] == "transform-failed"
    stored = [r for r in await env.topic("odds") if r.key in (b"a1", b"a2")]
    assert [json.loads(r.value) for r in stored] == [
        {**record("a1", 2.5, 1.6, "acme", "none"), "seq": 11}
    ]
    assert dict(stored[0].headers)["edgebridge-protocol"] == b"mcp"
    async with mcp_session(url, env.token("viewer", "reader")) as session:
        read = result_json(await session.call_tool("read_provider", {"fixture": "a1"}))
    values = [r["value"] for r in read["records"]]
    assert values == [record("a1", 2.5, 1.6, "***", "none")]
