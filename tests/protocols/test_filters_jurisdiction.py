"""Issue 16 items 3 and 6 through real clients on the real broker: subscriber filters (SSE over
httpx, HTTP fetch, paho MQTT 5 user properties) deliver exactly the matching records, a shared
filter runs once per record, a bad filter parameter is refused in each protocol, a filtered
stream resumes exactly; jurisdiction refusals (HTTP/SSE 451 problem+json, MQTT 0x87 / 0x80)
produce nothing, records carry their region and the rule that let them in, a reader of one
region never gets another region's records, and the refusal's audit line names the rule.

One bridge (instance region ``gb``) serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from guard_support import read_records
from harness import config_text
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sse_support import EventParser, EventStream, produce, read_events
from structlog.testing import capture_logs

from bridge.model.config import parse_config
from bridge.model.jurisdiction import REGION_HEADER, RULE_HEADER
from bridge.process.runtime import Bridge

sys.path.insert(0, str(Path(__file__).resolve().parent / "mqtt"))
from mqtt_support import Paho, mqtt_port

SECRET = "s3cret-for-governance-tests-0123456789"
PROBLEM = "application/problem+json"
TAG = uuid.uuid4().hex[:8]
ODDS = f"gov-odds-{TAG}"
GB = f"gov-gb-{TAG}"

ROUTES = f"""
[guard]
type = "jwt"
secret = "{SECRET}"
region_claim = "country"

[kafka.topics.{ODDS}]
compact = true

[kafka.topics.{GB}]
compact = true

[[routes]]
name = "odds"
topic = "{ODDS}"
key = "{{match}}"
content_type = "application/json"
[[routes.filters]]
name = "market"
source = "/market"
[[routes.filters]]
name = "min_odds"
source = "/home"
operator = "gte"
type = "number"
[routes.sse]
path = "/odds"
[routes.mqtt]
topic = "odds/{{match}}"
[routes.http]
method = "GET"
path = "/odds-table"
collection = true

[[routes]]
name = "gb-market"
topic = "{GB}"
key = "{{match}}"
[routes.jurisdiction]
publish = ["gb"]
read = ["gb"]
local = true
[[routes.jurisdiction.exceptions]]
role = "regulator"
read = ["*"]
[routes.sse]
path = "/gb"
[routes.mqtt]
topic = "gb/{{match}}"
[[routes.http]]
method = "POST"
path = "/gb/{{match}}"
[[routes.http]]
method = "GET"
path = "/gb-table"
collection = true
"""


def token(sub: str, country: str | None, role: str = "bettor") -> str:
    claims: dict[str, Any] = {"sub": sub, "scope": role, "exp": int(time.time() + 600)}
    if country is not None:
        claims["country"] = country
    return jwt.encode(claims, SECRET)


GB_USER = token("gina", "GB")
FR_USER = token("fred", "FR")
REGULATOR = token("rita", "FR", "regulator")


@pytest.fixture(scope="module")
async def bridge(kafka_bootstrap: str) -> AsyncIterator[Bridge]:
    text = config_text(ROUTES).replace('name = "test"', 'name = "test"\nregion = "GB"', 1)
    config = parse_config(text, Path("test-routing.toml"), {"KAFKA_BOOTSTRAP": kafka_bootstrap})
    started = Bridge(config)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
async def client(bridge: Bridge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}") as http:
        yield http


def odds(market: str, home: float) -> str:
    return json.dumps({"market": market, "home": home}, separators=(",", ":"))


def datas(events: list[Any]) -> list[str]:
    return [e.data for e in events]


# -- filters -----------------------------------------------------------------------------------


async def test_sse_filtered_streams_get_exactly_their_records_and_share_one_evaluation(
    bridge: Bridge, client: httpx.AsyncClient
) -> None:
    _, hub = bridge.kafka
    url = "/odds?market=1x2&min_odds=2"
    async with (
        EventStream(client, path=url) as first,
        EventStream(client, path="/odds?min_odds=2.0&market=1x2") as same,
        EventStream(client, path="/odds?market=ou") as other,
    ):
        feed = hub.feeds()[ODDS]
        assert feed.filter_groups == 2  # three subscribers, two distinct canonical filters
        before = feed.filter_evaluations
        records = [odds("1x2", 1.5), odds("ou", 3), odds("1x2", 2.0), odds("1x2", 7.25)]
        for i, value in enumerate(records):
            await produce(bridge, ODDS, [value], key=f"s{i}")
        wanted = [odds("1x2", 2.0), odds("1x2", 7.25)]
        assert datas(await first.until(2)) == wanted
        assert datas(await same.until(2)) == wanted
        assert datas(await other.until(1)) == [odds("ou", 3)]
        # Each record was checked once, by the one filter wanting its market (the filters are
        # indexed by their equality condition): never once per subscriber (3 x 4 = 12), nor
        # even once per distinct filter (2 x 4 = 8).
        assert feed.filter_evaluations - before == len(records)


async def test_a_filtered_stream_resumes_exactly(bridge: Bridge, client: httpx.AsyncClient) -> None:
    url = "/odds?market=1x2"
    async with EventStream(client, path=url) as stream:
        await produce(bridge, ODDS, [odds("1x2", 1)], key="r1")
        await produce(bridge, ODDS, [odds("ou", 1)], key="r2")  # filtered out
        (first,) = await stream.until(1)
    assert first.data == odds("1x2", 1)
    # While the client is away: filtered-out and matching records.
    await produce(bridge, ODDS, [odds("ou", 2)], key="r3")
    await produce(bridge, ODDS, [odds("1x2", 2)], key="r4")
    await produce(bridge, ODDS, [odds("ou", 3)], key="r5")
    await produce(bridge, ODDS, [odds("1x2", 3)], key="r6")
    events, _ = await read_events(client, url, 2, headers={"Last-Event-ID": first.id})
    assert datas(events) == [odds("1x2", 2), odds("1x2", 3)]
    # Resuming from the last id gets nothing already seen: the next record is the next event.
    last = events[-1].id
    assert last != first.id
    resumed = EventStream(client, {"Last-Event-ID": last}, path=url)
    request = client.build_request("GET", url, headers=resumed.headers)
    response = await client.send(request, stream=True)
    try:
        assert response.status_code == 200
        await produce(bridge, ODDS, [odds("ou", 4)], key="r7")
        await produce(bridge, ODDS, [odds("1x2", 4)], key="r8")
        parser, got = EventParser(), []
        chunks = response.aiter_raw()
        while not got:
            got.extend(parser.feed(await asyncio.wait_for(anext(chunks), 10)))
        assert datas(got) == [odds("1x2", 4)]
    finally:
        await response.aclose()


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("min_odds=high", "min_odds"), ("min_odds=NaN", "min_odds"), ("colour=red", "colour")],
)
async def test_a_bad_filter_parameter_is_400_problem_json(
    client: httpx.AsyncClient, query: str, parameter: str
) -> None:
    stream = await client.get(f"/odds?{query}", headers={"accept": "text/event-stream"})
    assert stream.status_code == 400
    assert stream.headers["content-type"] == PROBLEM
    assert parameter in stream.json()["detail"]
    fetch = await client.get(f"/odds-table?{query}")
    assert fetch.status_code == 400
    assert fetch.headers["content-type"] == PROBLEM
    assert fetch.json()["parameter"] == parameter


async def test_http_fetch_returns_exactly_the_matching_values(
    bridge: Bridge, client: httpx.AsyncClient
) -> None:
    marker = uuid.uuid4().hex[:6]
    await produce(bridge, ODDS, [json.dumps({"market": marker, "home": 1.2})], key="f1")
    await produce(bridge, ODDS, [json.dumps({"market": marker, "home": 4.5})], key="f2")
    await produce(bridge, ODDS, [json.dumps({"market": "other", "home": 9})], key="f3")
    for _ in range(200):
        response = await client.get(f"/odds-table?market={marker}&min_odds=2")
        if response.status_code == 200 and response.json():
            break
        await asyncio.sleep(0.02)
    assert response.json() == [{"market": marker, "home": 4.5}]
    everything = await client.get(f"/odds-table?market={marker}")
    assert [v["home"] for v in everything.json()] == [1.2, 4.5]


class Subscriber5(Paho):
    """A paho MQTT 5 client that sends user properties on SUBSCRIBE and keeps SUBACK reasons."""

    def __init__(self, port: int, client_id: str = "", clean: bool = True) -> None:
        super().__init__(port, client_id, clean=clean)
        self.suback_reasons: dict[int, str] = {}
        self.client.on_subscribe = self._on_subscribe_with_reason

    def _on_subscribe_with_reason(
        self, client: Any, userdata: Any, mid: int, codes: Any, properties: Any
    ) -> None:
        self.suback_reasons[mid] = getattr(properties, "ReasonString", "")
        self._on_subscribe(client, userdata, mid, codes, properties)

    async def subscribe_filtered(self, topic_filter: str, **values: str) -> tuple[list[int], str]:
        def run() -> tuple[list[int], str]:
            properties = Properties(PacketTypes.SUBSCRIBE)
            properties.UserProperty = list(values.items())
            _, mid = self.client.subscribe(
                topic_filter, options=SubscribeOptions(qos=1), properties=properties
            )
            return self._wait(self.subacks, mid), self.suback_reasons.get(mid, "")

        return await asyncio.to_thread(run)


async def test_mqtt_user_properties_filter_a_subscription(bridge: Bridge) -> None:
    sub = Subscriber5(mqtt_port(bridge))
    await sub.connect()
    try:
        codes, _ = await sub.subscribe_filtered("odds/+", market="1x2", min_odds="3")
        assert codes == [1]
        bad, reason = await sub.subscribe_filtered("odds/#", min_odds="lots")
        assert bad == [0x83] and "min_odds" in reason
        undeclared, reason = await sub.subscribe_filtered("odds/#", colour="red")
        assert undeclared == [0x83] and "colour" in reason
        shared, reason = await sub.subscribe_filtered("$share/g/odds/+", market="1x2")
        assert shared == [0x83] and "shared" in reason
        await produce(bridge, ODDS, [odds("1x2", 2)], key="q1")
        await produce(bridge, ODDS, [odds("ou", 5)], key="q2")
        await produce(bridge, ODDS, [odds("1x2", 3.5)], key="q3")
        (message,) = await sub.get_many(1)
        assert (message.topic, message.payload.decode()) == ("odds/q3", odds("1x2", 3.5))
        await sub.nothing_more(0.5)
    finally:
        await sub.disconnect()


# -- jurisdiction ------------------------------------------------------------------------------


async def test_jurisdiction_refusals_produce_nothing_and_accepted_records_are_tagged(
    bridge: Bridge, client: httpx.AsyncClient, kafka_bootstrap: str
) -> None:
    with capture_logs() as logs:
        refused = await client.post(
            "/gb/j1", content=b'{"from":"fr"}', headers={"authorization": f"Bearer {FR_USER}"}
        )
    assert refused.status_code == 451
    assert refused.headers["content-type"] == PROBLEM
    assert refused.json()["rule"] == "routes[gb-market].jurisdiction.publish"
    audit = [e for e in logs if e["event"] == "audit.jurisdiction_refused"]
    assert audit and audit[0]["rule"] == "routes[gb-market].jurisdiction.publish"
    assert audit[0]["region"] == "fr" and audit[0]["protocol"] == "http"

    stream = await client.get(
        "/gb", headers={"accept": "text/event-stream", "authorization": f"Bearer {FR_USER}"}
    )
    assert stream.status_code == 451 and stream.headers["content-type"] == PROBLEM
    fetch = await client.get("/gb-table", headers={"authorization": f"Bearer {FR_USER}"})
    assert fetch.status_code == 451 and fetch.json()["rule"].endswith("jurisdiction.read")

    fr = Subscriber5(mqtt_port(bridge))
    await fr.connect(auth=("fred", FR_USER))
    v3 = Paho(mqtt_port(bridge), version=4)
    await v3.connect(auth=("fred", FR_USER))
    try:
        assert await fr.publish("gb/j2", b'{"from":"fr-mqtt"}', qos=1) == 0x87
        codes, reason = await fr.subscribe_filtered("gb/+")
        assert codes == [0x87] and "routes[gb-market].jurisdiction.read" in reason
        assert await v3.subscribe("gb/+", qos=1) == [0x80]
    finally:
        await fr.disconnect()
        await v3.disconnect()

    accepted = await client.post(
        "/gb/j3", content=b'{"from":"gb"}', headers={"authorization": f"Bearer {GB_USER}"}
    )
    assert accepted.status_code in (200, 202), accepted.text
    gb_mqtt = Paho(mqtt_port(bridge))
    await gb_mqtt.connect()  # no token: a caller of this instance's region (gb)
    try:
        assert await gb_mqtt.publish("gb/j4", b'{"from":"gb-mqtt"}', qos=1) == 0
    finally:
        await gb_mqtt.disconnect()
    records = await read_records(kafka_bootstrap, GB, 2, settle_s=1.0)
    assert sorted(r.value for r in records) == [b'{"from":"gb"}', b'{"from":"gb-mqtt"}']
    for found in records:
        headers = dict(found.headers)
        assert headers[REGION_HEADER] == b"gb"
        assert headers[RULE_HEADER] == b"routes[gb-market].jurisdiction.publish"


async def test_a_reader_only_gets_records_of_its_own_region(
    bridge: Bridge, client: httpx.AsyncClient
) -> None:
    gb_headers = {"authorization": f"Bearer {GB_USER}"}
    regulator = {"authorization": f"Bearer {REGULATOR}"}
    async with (
        EventStream(client, gb_headers, path="/gb") as gb_reader,
        EventStream(client, regulator, path="/gb") as regulator_reader,
    ):
        gb_mqtt = Paho(mqtt_port(bridge))
        await gb_mqtt.connect(auth=("gina", GB_USER))
        try:
            assert await gb_mqtt.subscribe("gb/+", qos=1) == [1]
            # Written in another region's instance (straight to Kafka, tagged ie), then here.
            await produce(bridge, GB, ["from-ie"], key="k1", headers=((REGION_HEADER, b"ie"),))
            await produce(bridge, GB, ["from-gb"], key="k2", headers=((REGION_HEADER, b"gb"),))
            assert datas(await gb_reader.until(1)) == ["from-gb"]
            assert datas(await regulator_reader.until(2)) == ["from-ie", "from-gb"]
            (message,) = await gb_mqtt.get_many(1)
            assert message.payload == b"from-gb"
            await gb_mqtt.nothing_more(0.3)
        finally:
            await gb_mqtt.disconnect()
    assert [e.data for e in gb_reader.events] == ["from-gb"]


async def test_retained_messages_replayed_on_subscribe_are_filtered(bridge: Bridge) -> None:
    publisher = Paho(mqtt_port(bridge))
    await publisher.connect()
    marker = uuid.uuid4().hex[:6]
    try:
        for name, market in (("rt1", marker), ("rt2", "other"), ("rt3", marker)):
            value = json.dumps({"market": market, "home": 2})
            assert await publisher.publish(f"odds/{name}", value, qos=1, retain=True) == 0
    finally:
        await publisher.disconnect()
    sub = Subscriber5(mqtt_port(bridge))
    await sub.connect()
    try:
        codes, _ = await sub.subscribe_filtered("odds/+", market=marker)
        assert codes == [1]
        got = sorted(m.topic for m in await sub.get_many(2))
        assert got == ["odds/rt1", "odds/rt3"]
        await sub.nothing_more(0.5)
    finally:
        await sub.disconnect()


async def test_a_persistent_session_keeps_its_filter(bridge: Bridge) -> None:
    client_id = f"filtered-{uuid.uuid4().hex[:6]}"
    phone = Subscriber5(mqtt_port(bridge), client_id)
    await phone.connect(session_expiry=600)
    codes, _ = await phone.subscribe_filtered("odds/+", market="1x2", min_odds="5")
    assert codes == [1]
    await phone.disconnect()
    await produce(bridge, ODDS, [odds("1x2", 1)], key="p1")
    await produce(bridge, ODDS, [odds("1x2", 6)], key="p2")
    await produce(bridge, ODDS, [odds("ou", 9)], key="p3")
    phone = Subscriber5(mqtt_port(bridge), client_id, clean=False)
    present, _, _ = await phone.connect(session_expiry=600)
    try:
        assert present
        (message,) = await phone.get_many(1)
        assert (message.topic, message.payload.decode()) == ("odds/p2", odds("1x2", 6))
        await phone.nothing_more(0.5)
    finally:
        await phone.disconnect()
