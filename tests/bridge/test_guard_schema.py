"""Shift-left governance through the real front-ends: one schema file, refused on every inbound
path (MQTT PUBLISH, HTTP produce) in the protocol's own words, nothing reaching the route's
topic; the dead-letter record; and /metrics scraped after real client traffic."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from guard_support import Paho, SseStream, read_records, read_topic
from prometheus_client.parser import text_string_to_metric_families
from sse_support import base_url

PAYLOAD_FORMAT_INVALID = 0x99
GOOD = {"userId": "alice", "matchId": "m1", "team": "home", "amount": 5}
BAD = {"userId": "alice", "matchId": "m1", "team": "draw", "amount": -1}


def routes(s: str) -> str:
    return f"""
[listeners.admin]
host = "127.0.0.1"
port = 0

[[routes]]
name = "bets-{s}"
topic = "sc-bets-{s}"
key = "{{match}}"
schema = "schemas/bet.json"
dead_letter = "sc-bets-{s}-rejected"
[routes.mqtt]
topic = "sc{s}/bets/{{match}}"
[routes.sse]
path = "/sc{s}/bets/{{match}}"
[routes.http]
method = "POST"
path = "/sc{s}/bets/{{match}}"
"""


@pytest.fixture
async def governed(bridge_factory: Any) -> Any:
    s = uuid.uuid4().hex[:8]
    bridge = await bridge_factory(routes(s), frontends=["mqtt", "sse", "http"])
    bridge.s = s
    bridge.route = bridge.config.routes[0]
    return bridge


async def send_http(bridge: Any, document: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=15) as http:
        return await http.post(
            f"/sc{bridge.s}/bets/m1",
            content=json.dumps(document).encode(),
            headers={"content-type": "application/json"},
        )


async def send_mqtt(bridge: Any, document: dict[str, Any]) -> int:
    client = Paho(bridge.frontend("mqtt").port, client_id=f"sc-{uuid.uuid4().hex[:6]}")
    await client.connect()
    try:
        return await client.publish(f"sc{bridge.s}/bets/m1", json.dumps(document).encode(), qos=1)
    finally:
        await client.disconnect()


async def send_both(bridge: Any, document: dict[str, Any]) -> tuple[httpx.Response, int]:
    """The same JSON through HTTP and MQTT; (HTTP response, MQTT 5 PUBACK reason)."""
    return await send_http(bridge, document), await send_mqtt(bridge, document)


async def test_schema_violations_are_refused_on_every_inbound_path(
    governed: Any, kafka_bootstrap: str
) -> None:
    answer, puback = await send_both(governed, BAD)
    assert answer.status_code == 400, answer.text
    pointers = {e["pointer"] for e in answer.json()["errors"]}
    assert pointers == {"/team", "/amount"}
    assert puback == PAYLOAD_FORMAT_INVALID
    good_answer, good_puback = await send_both(governed, GOOD)
    assert good_answer.status_code < 300 and good_puback == 0
    stored = await read_topic(kafka_bootstrap, governed.route.topic, 2)
    assert [json.loads(v) for v in stored] == [GOOD, GOOD]  # only the valid ones


SENDERS = {"http": send_http, "mqtt": send_mqtt}


@pytest.mark.parametrize("protocol", ["http", "mqtt"])
async def test_refused_payloads_reach_the_dead_letter_topic(
    governed: Any, kafka_bootstrap: str, protocol: str
) -> None:
    before = await scrape(governed)
    await SENDERS[protocol](governed, BAD)
    [record] = await read_records(kafka_bootstrap, governed.route.dead_letter, 1)
    assert json.loads(record.value) == BAD  # unchanged, as sent
    headers = dict(record.headers)
    assert headers["edgebridge-dlq-reason"] == b"schema"
    assert headers["edgebridge-protocol"] == protocol.encode()
    pointers = {v["pointer"] for v in json.loads(headers["edgebridge-dlq-violations"])}
    assert pointers == {"/team", "/amount"}
    after = await scrape(governed)
    key = ("edgebridge_rejections_total", (("protocol", protocol), ("reason", "schema")))
    assert after.get(key, 0.0) - before.get(key, 0.0) == 1
    route_key = ("edgebridge_dead_letters_total", (("route", governed.route.name),))
    assert after.get(route_key, 0.0) - before.get(route_key, 0.0) == 1


async def scrape(bridge: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{bridge.admin.port}/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_scraped_after_client_traffic(governed: Any) -> None:
    """Real clients on real protocols move the core's metrics: produce latency per record
    acknowledged, fan-out lag per record handed to live subscribers."""
    s, topic = governed.s, governed.route.topic
    before = await scrape(governed)
    async with httpx.AsyncClient(base_url=base_url(governed), timeout=15) as http:
        stream = SseStream(http, f"/sc{s}/bets/m1", None)
        assert (await stream.response()).status_code == 200
        await send_both(governed, GOOD)
        for _ in range(2):
            await asyncio.wait_for(stream.events.get(), 15)
        await stream.close()
    after = await scrape(governed)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    produced = sum(
        delta("edgebridge_kafka_produce_seconds_count", acks=acks) for acks in ("0", "1", "all")
    )
    assert produced >= 2  # the HTTP and the MQTT message (front-ends may write more records)
    assert delta("edgebridge_fanout_lag_seconds_count", topic=topic) == 2
    route = governed.route.name
    assert delta("edgebridge_messages_in_total", route=route, protocol="http") == 1
    assert delta("edgebridge_bytes_in_total", route=route, protocol="http") == len(json.dumps(GOOD))
