"""Issue 6 at the MQTT edge, with real paho clients on the real broker: refused payloads reach
the dead-letter topic on MQTT 3.1.1 too; /metrics shows MQTT connections, messages, bytes,
rejections, resumed sessions and slow clients; an identity-bound route refuses a SUBSCRIBE to
another user's topics (SUBACK 0x87 / 0x80) and a wildcard over the identity level delivers only
the caller's own records."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
from mqtt_support import mqtt_port, unique
from prometheus_client.parser import text_string_to_metric_families

SECRET = "s3cret-for-tests-only-0123456789abcdef"
NOT_AUTHORIZED = 0x87
V3_FAILURE = 0x80
BAD_BET = {"userId": "alice", "matchId": "m1", "team": "draw", "amount": -1}
GOOD_BET = {"userId": "alice", "matchId": "m1", "team": "home", "amount": 5}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def token(sub: str, ttl: float = 600) -> str:
    return jwt.encode({"sub": sub, "scope": "bettor", "exp": int(time.time() + ttl)}, SECRET)


ADMIN = """
[listeners.admin]
host = "127.0.0.1"
port = 0
"""


def governed_routes(prefix: str) -> str:
    return f"""
[[routes]]
name = "bets-{prefix}"
topic = "{prefix}-bets"
key = "{{match}}"
schema = "schemas/bet.json"
dead_letter = "{prefix}-bets-rejected"
[routes.mqtt]
topic = "{prefix}/bets/{{match}}"
"""


def identity_routes(prefix: str) -> str:
    return f"""
[guard]
type = "jwt"
secret = "{SECRET}"

[[routes]]
name = "user-bets-{prefix}"
topic = "{prefix}-user-bets"
key = "{{user}}"
[routes.mqtt]
topic = "{prefix}/users/{{user}}/bets"
[routes.access]
publish = ["bettor"]
subscribe = ["bettor"]
identity = "user"
"""


async def scrape(bridge: Any) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{bridge.admin.port}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def eventually(bridge: Any, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds: counts made after the client's answer (a close) land a
    moment later. Bounded by attempts, not by a timing assertion."""
    for _ in range(100):
        samples = await scrape(bridge)
        if check(samples):
            return samples
        await asyncio.sleep(0.1)
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


# -- dead letters ---------------------------------------------------------------------------------


async def test_mqtt311_schema_refusal_closes_and_dead_letters(mqtt_bridge, paho, kafka_records):
    prefix = unique("gv")
    bridge = await mqtt_bridge(ADMIN + governed_routes(prefix))
    client = paho(mqtt_port(bridge), version=4)
    await client.connect()
    # QoS 0: paho would re-send a QoS 1 publish after reconnecting, each one refused anew.
    await client.publish(f"{prefix}/bets/m1", json.dumps(BAD_BET), qos=0)
    await client.wait_disconnected()  # 3.1.1 has no negative PUBACK: the connection closes
    [record] = await kafka_records(f"{prefix}-bets-rejected", 1)
    assert json.loads(record.value) == BAD_BET
    headers = dict(record.headers)
    assert headers["edgebridge-dlq-reason"] == b"schema"
    assert headers["edgebridge-dlq-address"] == f"{prefix}/bets/m1".encode()
    assert headers["edgebridge-protocol"] == b"mqtt"
    assert headers["edgebridge-client-id"] == client.client._client_id
    assert await kafka_records(f"{prefix}-bets", 1, timeout=1) == []  # never on the route


# -- metrics ----------------------------------------------------------------------------------------


async def test_mqtt_traffic_moves_the_metrics(mqtt_bridge, paho):
    prefix = unique("gm")
    bridge = await mqtt_bridge(ADMIN + governed_routes(prefix))
    port, route = mqtt_port(bridge), f"bets-{prefix}"
    before = await scrape(bridge)
    first = paho(port, client_id=unique("sub"))
    await first.connect(session_expiry=300)
    assert await first.subscribe(f"{prefix}/bets/+", qos=1) == [1]
    await first.drop()  # a phone in a tunnel; its persistent session stays
    subscriber = paho(port, client_id=first.client._client_id.decode(), clean=False)
    _, code, _ = await subscriber.connect(session_expiry=300)
    assert code == 0 and subscriber.connack is not None and subscriber.connack[0]  # present
    publisher = paho(port)
    await publisher.connect()
    good = json.dumps(GOOD_BET).encode()
    assert await publisher.publish(f"{prefix}/bets/m1", good, qos=1) == 0
    assert await publisher.publish(f"{prefix}/bets/m2", good, qos=0) == 0
    assert await publisher.publish(f"{prefix}/bets/m1", json.dumps(BAD_BET), qos=1) == 0x99
    assert await publisher.publish(f"{prefix}/elsewhere", good, qos=1) == 0x90  # no route
    assert await subscriber.subscribe(f"{prefix}/nothing/#") == [0x8F]
    assert sorted(m.topic for m in await subscriber.get_many(2)) == [
        f"{prefix}/bets/m1",
        f"{prefix}/bets/m2",
    ]
    after = await eventually(
        bridge, lambda s: delta(before, s, "edgebridge_connections", protocol="mqtt") == 2
    )

    def moved(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert moved("edgebridge_connections", protocol="mqtt") == 2  # the dropped one is gone
    assert moved("edgebridge_connections_opened_total", protocol="mqtt") == 3
    assert moved("edgebridge_sessions_resumed_total", protocol="mqtt") == 1
    assert moved("edgebridge_messages_in_total", route=route, protocol="mqtt") == 2
    assert moved("edgebridge_bytes_in_total", route=route, protocol="mqtt") == 2 * len(good)
    assert moved("edgebridge_messages_out_total", route=route, protocol="mqtt") == 2
    assert moved("edgebridge_bytes_out_total", route=route, protocol="mqtt") == 2 * len(good)
    assert moved("edgebridge_rejections_total", protocol="mqtt", reason="schema") == 1
    assert moved("edgebridge_rejections_total", protocol="mqtt", reason="no_route") == 2
    assert moved("edgebridge_dead_letters_total", route=route) == 1
    submitted = sum(
        moved("edgebridge_kafka_produce_seconds_count", acks=acks) for acks in ("0", "1", "all")
    )
    assert submitted >= 3  # two publishes through Producer.submit, the dead letter via send


async def test_auth_and_malformed_refusals_are_counted(mqtt_bridge, paho):
    prefix = unique("ga")
    bridge = await mqtt_bridge(ADMIN + identity_routes(prefix))
    port = mqtt_port(bridge)
    before = await scrape(bridge)
    refused = paho(port)
    _, code, _ = await refused.connect(auth=("x", token("alice", ttl=-600)))
    assert code == 0x86  # bad user name or password
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\xf0\x00")  # AUTH before CONNECT, 3.1.1-style fixed header: malformed
    await writer.drain()

    def counted(samples: Samples, reason: str) -> float:
        return delta(before, samples, "edgebridge_rejections_total", protocol="mqtt", reason=reason)

    after = await eventually(bridge, lambda s: counted(s, "malformed") >= 1)
    writer.close()
    # The registry is per process and shared by every bridge a test session starts, so an
    # expiring token elsewhere (another test's client) may add to this series: at least ours.
    assert counted(after, "token_expired") >= 1
    assert counted(after, "malformed") == 1


async def test_a_client_that_cannot_keep_up_is_counted(mqtt_bridge, paho):
    """A subscriber that never acknowledges: its receive maximum fills, then the bridge's queue
    for it overflows and it is closed (it would resume from its saved position)."""
    prefix = unique("gs")
    bridge = await mqtt_bridge(ADMIN + governed_routes(prefix), max_queued=3)
    port = mqtt_port(bridge)
    before = await scrape(bridge)
    stalled = paho(port, manual_ack=True)
    await stalled.connect(ReceiveMaximum=2)
    assert await stalled.subscribe(f"{prefix}/bets/+", qos=1) == [1]
    publisher = paho(port)
    await publisher.connect()
    for _ in range(8):
        assert await publisher.publish(f"{prefix}/bets/m1", json.dumps(GOOD_BET), qos=1) == 0
    assert await stalled.wait_disconnected() == 0x97  # quota exceeded
    after = await scrape(bridge)
    assert delta(before, after, "edgebridge_slow_client_disconnects_total", protocol="mqtt") == 1


# -- identity-bound subscriptions ------------------------------------------------------------------


async def bettor(paho: Any, port: int, user: str, version: int = 5) -> Any:
    client = paho(port, version=version)
    _, code, _ = await client.connect(auth=(user, token(user)))
    assert code == 0
    return client


async def test_subscribing_to_another_users_topics_is_refused(mqtt_bridge, paho, kafka_records):
    prefix = unique("gi")
    port = mqtt_port(await mqtt_bridge(identity_routes(prefix)))
    alice = await bettor(paho, port, "alice")
    assert await alice.subscribe(f"{prefix}/users/bob/#", qos=1) == [NOT_AUTHORIZED]
    assert await alice.subscribe(f"{prefix}/users/bob/bets", qos=1) == [NOT_AUTHORIZED]
    alice311 = await bettor(paho, port, "alice", version=4)
    assert await alice311.subscribe(f"{prefix}/users/bob/bets", qos=1) == [V3_FAILURE]
    assert await alice.subscribe(f"{prefix}/users/alice/bets", qos=1) == [1]  # her own
    bob = await bettor(paho, port, "bob")
    assert await bob.publish(f"{prefix}/users/bob/bets", "bob-1", qos=1) == 0
    assert await alice.publish(f"{prefix}/users/alice/bets", "alice-1", qos=1) == 0
    stored = await kafka_records(f"{prefix}-user-bets", 2)
    assert sorted(r.value for r in stored) == [b"alice-1", b"bob-1"]  # bob's is in Kafka...
    [message] = await alice.get_many(1)
    assert message.payload == b"alice-1"
    await alice.nothing_more()  # ...and never reached alice
    await alice311.nothing_more(0)


async def test_a_wildcard_over_the_identity_delivers_only_the_callers_records(
    mqtt_bridge, paho, kafka_records
):
    prefix = unique("gw")
    port = mqtt_port(await mqtt_bridge(identity_routes(prefix)))
    alice = await bettor(paho, port, "alice")
    assert await alice.subscribe(f"{prefix}/users/+/bets", qos=1) == [1]
    alice_all = await bettor(paho, port, "alice")
    assert await alice_all.subscribe(f"{prefix}/#", qos=1) == [1]
    bob = await bettor(paho, port, "bob")
    for i in range(3):
        assert await bob.publish(f"{prefix}/users/bob/bets", f"bob-{i}", qos=1) == 0
    assert await alice.publish(f"{prefix}/users/alice/bets", "alice-1", qos=1) == 0
    stored = await kafka_records(f"{prefix}-user-bets", 4)
    assert len(stored) == 4
    for client in (alice, alice_all):
        [message] = await client.get_many(1)
        assert (message.topic, message.payload) == (f"{prefix}/users/alice/bets", b"alice-1")
        await client.nothing_more()
