"""The admin listener of a real bridge: /metrics scraped over HTTP after real Kafka traffic,
/healthz, and /readyz turning 503 when the (real) broker goes away or the bridge drains."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from harness import start_bridge
from prometheus_client.parser import text_string_to_metric_families

from bridge.kafka.hub import QueueSubscriber, Start
from bridge.model.message import Message
from bridge.telemetry import metrics

BridgeFactory = Callable[..., Awaitable[Any]]


def routes(topic: str) -> str:
    return f"""
[listeners.admin]
host = "127.0.0.1"
port = 0

[[routes]]
name = "{topic}"
topic = "{topic}"
key = "{{match}}"
[routes.sse]
path = "/m/{{match}}"
"""


async def scrape(bridge: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels)."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{bridge.admin.port}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def get(bridge: Any, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{bridge.admin.port}{path}")


async def test_metrics_after_real_traffic(bridge_factory: BridgeFactory) -> None:
    topic = f"metrics-{uuid.uuid4().hex[:8]}"
    bridge = await bridge_factory(routes(topic), frontends=[])
    producer, hub = bridge.kafka
    before = await scrape(bridge)
    subscriber = QueueSubscriber()
    subscription = await hub.subscribe(topic, subscriber, Start.LIVE)
    for i in range(5):
        await producer.send(Message(topic, b"m1", f"{i}-0".encode()), "1")
    for _ in range(5):
        await subscriber.get()
    subscription.close()
    # What front-ends report through the helpers, as they would for a real client.
    metrics.connection_opened("sse")
    metrics.message_out(topic, "sse", payload_bytes=3, count=5)
    metrics.message_in(topic, "mqtt", payload_bytes=11)
    metrics.auth_rejected("mqtt", type("E", (Exception,), {"reason": "expired"})())
    metrics.slow_client_disconnected("sse")
    metrics.session_resumed("sse")
    after = await scrape(bridge)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("edgebridge_kafka_produce_seconds_count", acks="1") == 5
    assert delta("edgebridge_kafka_produce_seconds_sum", acks="1") > 0
    assert delta("edgebridge_fanout_lag_seconds_count", topic=topic) == 5
    assert delta("edgebridge_connections", protocol="sse") == 1
    assert delta("edgebridge_connections_opened_total", protocol="sse") == 1
    assert delta("edgebridge_messages_out_total", route=topic, protocol="sse") == 5
    assert delta("edgebridge_bytes_out_total", route=topic, protocol="sse") == 15
    assert delta("edgebridge_messages_in_total", route=topic, protocol="mqtt") == 1
    assert delta("edgebridge_bytes_in_total", route=topic, protocol="mqtt") == 11
    assert delta("edgebridge_rejections_total", protocol="mqtt", reason="token_expired") == 1
    assert delta("edgebridge_slow_client_disconnects_total", protocol="sse") == 1
    assert delta("edgebridge_sessions_resumed_total", protocol="sse") == 1
    metrics.connection_closed("sse")
    assert value(await scrape(bridge), "edgebridge_connections", protocol="sse") == value(
        before, "edgebridge_connections", protocol="sse"
    )


async def test_healthz_and_readyz(bridge_factory: BridgeFactory) -> None:
    topic = f"ready-{uuid.uuid4().hex[:8]}"
    bridge = await bridge_factory(routes(topic), frontends=[])
    health = await get(bridge, "/healthz")
    assert health.status_code == 200 and health.json()["status"] == "alive"
    ready = await get(bridge, "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["kafka"]["ok"] and ready.json()["checks"]["listeners"]["ok"]
    bridge.draining = True  # what stop() sets first
    try:
        draining = await get(bridge, "/readyz")
    finally:
        bridge.draining = False
    assert draining.status_code == 503
    assert draining.json()["checks"]["listeners"]["detail"] == "draining"


@pytest.mark.broker  # starts its own broker
async def test_readyz_fails_when_kafka_goes_away() -> None:
    """A bridge on its own embedded broker; the broker stops, /readyz must say so."""
    bridge = await start_bridge(routes(f"gone-{uuid.uuid4().hex[:8]}"), "", frontends=[])
    try:
        assert bridge.embedded is not None
        assert (await get(bridge, "/readyz")).status_code == 200
        await bridge.embedded.stop()
        deadline = time.monotonic() + 30
        response = await get(bridge, "/readyz")
        while response.status_code == 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.3)  # past the probe cache
            response = await get(bridge, "/readyz")
        assert response.status_code == 503
        body = response.json()
        assert not body["checks"]["kafka"]["ok"] and body["checks"]["listeners"]["ok"]
        assert (await get(bridge, "/healthz")).status_code == 200  # alive, just not ready
    finally:
        bridge.embedded = None  # already stopped
        await bridge.stop()


def test_observe_all_adds_what_observe_would() -> None:
    """The batch producer settles a batch's latencies with one call: the exposition must be
    what one ``observe`` per value gives (bucket edges included), on this prometheus-client."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    values = [0.0, 0.0005, 0.001, 0.0011, 0.02, 0.02, 0.3, 7.0, 1e9, 0.001]
    exposed = []
    for batched in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("h", "h", ["acks"], buckets=(0.001, 0.02, 1.0), registry=registry)
        child = histogram.labels("1")
        if batched:
            metrics.observe_all(child, values[:4])
            metrics.observe_all(child, [])
            metrics.observe_all(child, values[4:])
        else:
            for value in values:
                child.observe(value)
        exposed.append(
            b"\n".join(
                line for line in generate_latest(registry).splitlines() if b"_created" not in line
            )
        )
    assert exposed[0] == exposed[1]
    assert b'h_bucket{acks="1",le="0.001"} 4.0' in exposed[1]


async def test_unknown_paths_answer_problem_json_on_both_listeners(
    bridge_factory: BridgeFactory,
) -> None:
    """Every error is application/problem+json, the listeners' own 404/405 included (they were
    Quart's HTML pages)."""
    topic = f"nf-{uuid.uuid4().hex[:8]}"
    bridge = await bridge_factory(routes(topic), frontends=["sse"])
    admin = await get(bridge, "/nope")
    async with httpx.AsyncClient() as client:
        main = await client.get(f"http://127.0.0.1:{bridge.web.port}/nope/nothing")
        wrong_method = await client.post(f"http://127.0.0.1:{bridge.admin.port}/metrics")
    for response in (admin, main):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/not-found")
        assert response.json()["status"] == 404
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"] == "application/problem+json"
    assert "GET" in wrong_method.headers["allow"]
