"""The JWT guard at the MQTT edge: the CONNECT password carries the token; routes check roles;
a token that expires closes the connection (MQTT 5: DISCONNECT 0xA0)."""

from __future__ import annotations

import time

import jwt
from mqtt_support import mqtt_port, unique

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(sub: str, roles: str, ttl: float = 600) -> str:
    return jwt.encode({"sub": sub, "scope": roles, "exp": int(time.time() + ttl)}, SECRET, "HS256")


def routes(prefix: str) -> str:
    return f"""
[guard]
type = "jwt"
secret = "{SECRET}"

[[routes]]
name = "scores"
topic = "{prefix}-scores"
key = "{{match}}"

[routes.mqtt]
topic = "{prefix}/stadium/{{match}}/score"

[routes.access]
publish = ["scoreboard"]
subscribe = ["anonymous"]
"""


async def test_roles_from_the_token_decide_who_may_publish(mqtt_bridge, paho, kafka_records):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(routes(prefix)))
    fan = paho(port)
    await fan.connect(auth=("fan", token("fan-1", "viewer")))
    assert await fan.publish(f"{prefix}/stadium/m1/score", "9-9", qos=1) == 0x87
    board = paho(port)
    await board.connect(auth=("board", token("board-1", "scoreboard")))
    assert await board.publish(f"{prefix}/stadium/m1/score", "1-0", qos=1) == 0
    [record] = await kafka_records(f"{prefix}-scores", 1)
    assert record.value == b"1-0"
    assert dict(record.headers)["edgebridge-principal"] == b"board-1"  # audit header


async def test_an_expiring_token_ends_the_connection(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(routes(prefix)))
    client = paho(port)
    _, code, _ = await client.connect(auth=("board", token("board-2", "scoreboard", ttl=2)))
    assert code == 0
    assert await client.wait_disconnected() == 0xA0  # maximum connect time
