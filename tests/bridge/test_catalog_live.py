"""GET /catalog on a real bridge over the embedded broker, read with httpx: products publish
over HTTP and MQTT (mosquitto_pub) and the catalog's freshness and rate move; an SSE client
moves the subscriber count; a refused payload is counted and dead-lettered; the token rules;
`edgebridge catalog --url` reads the same live figures."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from harness import REPO, start_bridge

pytestmark = pytest.mark.broker

SECRET = "catalog-test-secret-catalog-test-secret-0123"
GUARD = f"""
[guard]
secret = "{SECRET}"
issuer = "catalog-test"
audience = "edgebridge"
"""
SCHEMA = {
    "type": "object",
    "required": ["value"],
    "properties": {"value": {"type": "number"}},
}


def token(sub: str, *roles: str) -> str:
    now = int(time.time())
    claims = {"sub": sub, "scope": " ".join(roles), "iat": now, "exp": now + 600}
    claims |= {"iss": "catalog-test", "aud": "edgebridge"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


OPS = token("olga", "ops")
SENSOR = token("sensor-7", "sensor")


@pytest.fixture(scope="module")
async def bridge(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    """One bridge for the module: two products on fresh topics, so figures start at zero."""
    directory = tmp_path_factory.mktemp("catalog")
    (directory / "reading.json").write_text(json.dumps(SCHEMA))
    uid = uuid.uuid4().hex[:8]
    routes = f"""
{GUARD}
[[routes]]
name = "readings"
description = "Meter readings per device."
owner = "metering"
tags = ["meters", "live"]
version = "1.4.0"
topic = "cat-readings-{uid}"
key = "{{device}}"
schema = "reading.json"
dead_letter = "cat-readings-dlq-{uid}"

[routes.mqtt]
topic = "cat-{uid}/{{device}}/reading"

[routes.http]
method = "POST"
path = "/readings/{{device}}"
idempotency = "off"

[routes.sse]
path = "/readings"

[routes.access]
publish = ["sensor"]
subscribe = ["anonymous"]

[[routes]]
name = "alerts"
description = "Alerts raised on readings."
owner = "metering"
version = "0.1.0"
topic = "cat-alerts-{uid}"

[routes.sse]
path = "/alerts"
start = "snapshot"  # a table: the feed /catalog opens first must serve a snapshot later
"""
    started = await start_bridge(
        routes,
        kafka_bootstrap,
        ["http", "sse", "mqtt", "docs"],
        directory=directory,
        http_options='catalog_roles = ["ops"]',
        extra='[listeners.admin]\nhost = "127.0.0.1"\nport = 0',
    )
    yield started
    await started.stop()


def base_url(bridge: Any) -> str:
    return f"http://127.0.0.1:{bridge.web.port}"


async def product(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await client.get("/catalog", headers={"authorization": f"Bearer {OPS}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    return next(p for p in response.json()["products"] if p["name"] == name)


async def until(
    client: httpx.AsyncClient, name: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The product's entry once ``check`` holds of its health (the catalog is read on demand:
    asking again is the only way to see a figure move)."""
    deadline = time.monotonic() + 10
    while True:
        entry = await product(client, name)
        if check(entry["health"]):
            return entry
        assert time.monotonic() < deadline, entry["health"]
        await asyncio.sleep(0.05)


async def test_the_catalog_needs_a_token_with_a_catalog_role(bridge) -> None:
    async with httpx.AsyncClient(base_url=base_url(bridge)) as client:
        anonymous = await client.get("/catalog")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert anonymous.headers["www-authenticate"].startswith("Bearer ")
        assert anonymous.json()["type"].endswith("/unauthenticated")

        forged_token = jwt.encode({"sub": "mallory", "scope": "ops"}, "x" * 40, algorithm="HS256")
        forged = await client.get("/catalog", headers={"authorization": f"Bearer {forged_token}"})
        assert forged.status_code == 401
        assert 'error="invalid_token"' in forged.headers["www-authenticate"]

        sensor = await client.get("/catalog", headers={"authorization": f"Bearer {SENSOR}"})
        assert sensor.status_code == 403
        assert sensor.json()["detail"] == "the catalog requires one of the roles: ops"

        posted = await client.post("/catalog", headers={"authorization": f"Bearer {OPS}"})
        assert posted.status_code == 405

        allowed = await client.get(
            "/catalog",
            params={"access_token": OPS},
            headers={"origin": "https://bets.example"},
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://bets.example"
        readings = allowed.json()["products"][0]
        assert readings["name"] == "readings"
        assert readings["owner"] == "metering" and readings["version"] == "1.4.0"
        assert readings["tags"] == ["meters", "live"]
        assert readings["addresses"]["http"] == ["POST /readings/{device}"]
        assert readings["addresses"]["sse"] == ["/readings"]
        assert readings["access"] == {"publish": ["sensor"], "subscribe": ["anonymous"]}


async def test_publishing_over_http_and_mqtt_moves_freshness_and_rate(bridge) -> None:
    async with httpx.AsyncClient(base_url=base_url(bridge)) as client:
        before = (await product(client, "readings"))["health"]
        assert before["status"] in ("idle", "live")
        started = time.time()
        for value in (1, 2, 3):
            sent = await client.post(
                "/readings/d1",
                json={"value": value},
                headers={"authorization": f"Bearer {SENSOR}"},
            )
            assert sent.status_code < 300, sent.text
        topic = bridge.config.routes[0].mqtt.template.source.replace("{device}", "d2")
        for value in (4, 5):
            pub = await asyncio.create_subprocess_exec(
                "mosquitto_pub",
                *("-h", "127.0.0.1", "-p", str(bridge.frontend("mqtt").port)),
                *("-V", "mqttv5", "-q", "1", "-u", "sensor-7", "-P", SENSOR),
                *("-t", topic, "-m", json.dumps({"value": value})),
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await pub.communicate()
            assert pub.returncode == 0, err
        after = await until(
            client, "readings", lambda h: h["records_seen"] >= before["records_seen"] + 5
        )
    health = after["health"]
    assert health["records_seen"] == before["records_seen"] + 5
    assert health["status"] == "live"
    last = datetime.fromisoformat(health["last_record_at"]).timestamp()
    assert last >= started - 0.01  # a record produced in this test is the newest
    assert health["last_record_age_s"] is not None and health["last_record_age_s"] >= 0
    # Five more records in the last minute: the rate moved by at least 5/60.
    assert round((health["records_per_s"] - before["records_per_s"]) * 60) >= 5
    assert health["consumer_lag"] == 0  # the hub has read everything it knows of
    # The product that got nothing stayed still.
    alerts = (await _catalog(bridge))["alerts"]["health"]
    assert alerts["records_seen"] == 0 and alerts["last_record_at"] is None
    assert alerts["status"] == "idle" and alerts["records_per_s"] == 0


async def _catalog(bridge: Any) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url(bridge)) as client:
        response = await client.get("/catalog", headers={"authorization": f"Bearer {OPS}"})
    return {p["name"]: p for p in response.json()["products"]}


async def test_an_sse_client_moves_the_subscriber_count(bridge) -> None:
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        before = (await product(client, "alerts"))["health"]["subscribers"]
        async with client.stream("GET", "/alerts", headers={"accept": "text/event-stream"}) as s:
            assert s.status_code == 200
            await until(client, "alerts", lambda h: h["subscribers"] == before + 1)
        await until(client, "alerts", lambda h: h["subscribers"] == before)


async def test_a_refused_payload_is_counted_and_dead_lettered(bridge) -> None:
    async with httpx.AsyncClient(base_url=base_url(bridge)) as client:
        before = (await product(client, "readings"))["health"]
        refused = await client.post(
            "/readings/d1",
            json={"value": "high"},
            headers={"authorization": f"Bearer {SENSOR}"},
        )
        assert 400 <= refused.status_code < 500
        assert refused.headers["content-type"] == "application/problem+json"
        after = await until(
            client, "readings", lambda h: h["dead_letters"] == before["dead_letters"] + 1
        )
    assert after["health"]["refused"] == before["refused"] + 1
    assert after["dead_letter_topic"].startswith("cat-readings-dlq-")
    # Nothing reached the product's own topic.
    assert after["health"]["records_seen"] == before["records_seen"]


async def test_catalog_command_reads_a_running_bridge(bridge) -> None:
    env = {**os.environ, "EDGEBRIDGE_TOKEN": OPS}
    run: Callable[..., Awaitable[asyncio.subprocess.Process]] = asyncio.create_subprocess_exec
    proc = await run(
        sys.executable,
        *("-m", "bridge.process.cli", "catalog", "--url", base_url(bridge)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=Path(REPO),
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    header = lines[0].split()
    assert header[-6:] == ["last", "record", "rec/s", "subs", "refused/dlq", "lag"]
    row = next(line.split() for line in lines if line.startswith("alerts "))
    # alerts: nothing ever arrived; zero subscribers, refusals and lag.
    assert row[-5:] == ["never", "0.00", "0", "0/0", "0"]

    bad = await run(
        sys.executable,
        *("-m", "bridge.process.cli", "catalog", "--url", base_url(bridge)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "EDGEBRIDGE_TOKEN"},
        cwd=Path(REPO),
    )
    _, err = await bad.communicate()
    assert bad.returncode == 1
    assert "401 the catalog requires a token (pass --token or set EDGEBRIDGE_TOKEN)" in err.decode()


CHROMIUM = "/usr/bin/chromium"


async def test_chromium_shows_the_catalog_on_docs_with_live_health(bridge) -> None:
    """The public /docs lists the products; with a token that may read the catalog the same page
    adds their live health, and a reload after an SSE client connects shows it counted."""
    from playwright import async_api as playwright_api

    url = base_url(bridge)
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{url}/docs")
            row = page.locator("tr#product-readings")
            await row.wait_for()
            assert await row.locator(".owner").inner_text() == "metering"
            assert await row.locator(".version").inner_text() == "1.4.0"
            text = await row.inner_text()
            assert "Meter readings per device." in text
            assert "POST /readings/{device}" in text and "/readings" in text
            assert await page.locator("td.health").count() == 0  # no token: no live figures

            await page.goto(f"{url}/docs?access_token={OPS}")
            alerts = page.locator("tr#product-alerts")
            before = int(await alerts.locator(".subscribers").inner_text())
            async with (
                httpx.AsyncClient(base_url=url, timeout=10) as client,
                client.stream("GET", "/alerts") as stream,
            ):
                assert stream.status_code == 200
                await until(client, "alerts", lambda h: h["subscribers"] == before + 1)
                await page.reload()
                assert int(await alerts.locator(".subscribers").inner_text()) == before + 1
            readings = page.locator("tr#product-readings td.health")
            assert await readings.locator(".status").inner_text() in ("live", "idle")
            assert await readings.locator(".lag").inner_text() == "0"
        finally:
            await browser.close()


async def test_prometheus_gets_the_same_figures_per_product(bridge) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
        text = (await client.get(f"http://127.0.0.1:{bridge.admin.port}/metrics")).text
        return {
            (sample.name, sample.labels["product"]): sample.value
            for family in text_string_to_metric_families(text)
            if family.name.startswith("edgebridge_product_")
            for sample in family.samples
        }

    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        readings = (await product(client, "readings"))["health"]  # follows every product topic
        before = await scrape(client)
        assert before[("edgebridge_product_refused_total", "readings")] == readings["refused"]
        assert before[("edgebridge_product_consumer_lag", "readings")] == 0
        if readings["last_record_at"] is not None:
            last = datetime.fromisoformat(readings["last_record_at"]).timestamp()
            key = ("edgebridge_product_last_record_timestamp_seconds", "readings")
            assert abs(before[key] - last) < 0.002
        subscribers = ("edgebridge_product_subscribers", "alerts")
        async with client.stream("GET", "/alerts") as stream:
            assert stream.status_code == 200
            await until(client, "alerts", lambda h: h["subscribers"] == before[subscribers] + 1)
            assert (await scrape(client))[subscribers] == before[subscribers] + 1


async def test_records_from_a_plain_kafka_client_count_too(bridge, kafka_bootstrap: str) -> None:
    """Health is the topic's, whoever writes it (the demo's odds engine is a plain Kafka client),
    not only what this bridge produced."""
    from mcp_support import kafka_producer

    topic = next(route.topic for route in bridge.config.routes if route.name == "alerts")
    async with httpx.AsyncClient(base_url=base_url(bridge)) as client:
        before = (await product(client, "alerts"))["health"]
        async with kafka_producer(kafka_bootstrap) as producer:
            await producer.send_and_wait(topic, b'{"alert":"meter 7 offline"}', key=b"m7")
        after = await until(
            client, "alerts", lambda h: h["records_seen"] == before["records_seen"] + 1
        )
    assert after["health"]["last_record_at"] is not None
    assert after["health"]["status"] == "live"
