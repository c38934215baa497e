"""The authorization matrix across every front-end, with real clients on a real bridge and the
real embedded broker: every route x allowed / wrong-role-or-other-user / anonymous identity x
every protocol that reaches it (MQTT publish and subscribe, HTTP produce, SSE stream). Allowed
requests pass and are delivered; denied ones are refused in the protocol's own words and their
records never reach Kafka (the topics are read back). Then expired, wrong-audience and
bad-signature tokens on each protocol, and connections closed when their token expires."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from guard_support import Paho, SseStream, read_topic
from sse_support import base_url

from bridge.model.message import Message

SECRET = "matrix-secret-matrix-secret-matrix-secret"
NOT_AUTHORIZED = 0x87  # MQTT 5 PUBACK/SUBACK reason "Not authorized"
BAD_CREDENTIALS = 0x86  # MQTT 5 CONNACK "Bad User Name or Password"
MAX_CONNECT_TIME = 0xA0  # MQTT 5 DISCONNECT "Maximum connect time"


def routes(s: str) -> str:
    return f"""
[guard]
secret = "{SECRET}"
issuer = "matrix-test"
audience = "edgebridge"
leeway_s = 0

[[routes]]
name = "scores"
topic = "mx-scores-{s}"
key = "{{match}}"
[routes.mqtt]
topic = "mx{s}/stadium/{{match}}/score"
[routes.sse]
path = "/mx{s}/matches/{{match}}/scores"
[routes.http]
method = "POST"
path = "/mx{s}/matches/{{match}}/scores"
[routes.access]
publish = ["scoreboard"]
subscribe = ["fan"]

[[routes]]
name = "bets"
topic = "mx-bets-{s}"
key = "{{user}}"
[routes.mqtt]
topic = "mx{s}/users/{{user}}/bets"
[routes.sse]
path = "/mx{s}/users/{{user}}/bets"
[routes.http]
method = "POST"
path = "/mx{s}/users/{{user}}/bets"
[routes.access]
publish = ["bettor"]
subscribe = ["bettor"]
identity = "user"

[[routes]]
name = "profile"
topic = "mx-profiles-{s}"
key = "{{user}}"
[routes.http]
method = "GET"
path = "/mx{s}/users/{{user}}/profile"
[routes.access]
subscribe = ["bettor"]
identity = "user"
"""


def token(sub: str, scope: str, ttl: float = 600, secret: str = SECRET, **claims: Any) -> str:
    now = time.time()
    body = {"sub": sub, "scope": scope, "iss": "matrix-test", "aud": "edgebridge"}
    body.update({"iat": int(now), "exp": int(now + ttl), **claims})
    return jwt.encode(body, secret, "HS256")


# who -> token (None: anonymous)
TOKENS = {
    "board": lambda: token("board-1", "scoreboard"),
    "fan": lambda: token("fan-1", "fan"),
    "alice": lambda: token("alice", "bettor"),
    "bob": lambda: token("bob", "bettor"),
    "anonymous": lambda: None,
}
# route -> (address parameter value, who may publish, who may subscribe, the others' refusal)
MATRIX = {
    "scores": ("m1", "board", "fan"),
    "bets": ("alice", "alice", "alice"),
}
# Who is refused, and whether for lack of a token (401) or of the right role/identity (403).
DENIED = {
    "scores": {
        "publish": {"fan": 403, "anonymous": 401},
        "subscribe": {"board": 403, "anonymous": 401},
    },
    "bets": {
        "publish": {"bob": 403, "anonymous": 401},
        "subscribe": {"bob": 403, "anonymous": 401},
    },
}


def addresses(s: str, route: str, param: str) -> tuple[str, str]:
    """(MQTT topic, HTTP/SSE path) of ``route`` for ``param``."""
    if route == "scores":
        return f"mx{s}/stadium/{param}/score", f"/mx{s}/matches/{param}/scores"
    return f"mx{s}/users/{param}/bets", f"/mx{s}/users/{param}/bets"


async def mqtt_client(port: int, bearer: str | None, version: int = 5) -> Paho:
    client = Paho(port, client_id=f"mx-{uuid.uuid4().hex[:8]}", version=version)
    connack = await client.connect(auth=("device", bearer) if bearer is not None else None)
    assert connack[1] == 0, connack
    return client


async def connect_311(port: int, username: str, password: str) -> bytes:
    """Send an MQTT 3.1.1 CONNECT with credentials; return the raw CONNACK."""

    def field(text: str) -> bytes:
        data = text.encode()
        return len(data).to_bytes(2, "big") + data

    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    body = field("MQTT") + bytes([4, flags, 0, 60])
    body += field(f"v311-{uuid.uuid4().hex[:6]}") + field(username) + field(password)
    assert len(body) < 16384
    length = (
        bytes([len(body) & 0x7F | 0x80, len(body) >> 7]) if len(body) > 127 else bytes([len(body)])
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(bytes([0x10]) + length + body)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(4), 15)
    finally:
        writer.close()


@pytest.fixture
async def matrix_bridge(bridge_factory: Any) -> Any:
    s = uuid.uuid4().hex[:8]
    bridge = await bridge_factory(routes(s), frontends=["mqtt", "sse", "http"])
    bridge.s = s
    return bridge


async def test_authorization_matrix_every_route_identity_and_protocol(
    matrix_bridge: Any, kafka_bootstrap: str
) -> None:
    bridge, s = matrix_bridge, matrix_bridge.s
    mqtt_port = bridge.frontend("mqtt").port
    tokens = {who: make() for who, make in TOKENS.items()}
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=15) as http:
        # -- subscribe: SSE stream and MQTT SUBSCRIBE, per route and identity ---------------
        listeners: dict[str, tuple[SseStream, Paho]] = {}
        clients: list[Paho] = []
        must_not_receive: list[Paho] = []
        streams: list[SseStream] = []
        for route, (param, _, subscriber) in MATRIX.items():
            topic, path = addresses(s, route, param)
            for who in [subscriber, *DENIED[route]["subscribe"]]:
                stream = SseStream(http, path, tokens[who])
                streams.append(stream)
                response = await stream.response()
                mqtt = await mqtt_client(mqtt_port, tokens[who])
                clients.append(mqtt)
                [granted] = await mqtt.subscribe(topic, qos=1)
                if who == subscriber:
                    assert response.status_code == 200, (route, who, response.text)
                    assert granted == 1, (route, who, granted)
                    listeners[route] = (stream, mqtt)
                else:
                    status = DENIED[route]["subscribe"][who]
                    assert response.status_code == status, (route, who, response.text)
                    if status == 401:
                        assert response.headers["www-authenticate"].startswith("Bearer")
                    if granted == NOT_AUTHORIZED:
                        continue
                    # The MQTT front-end grants a filter naming another user and filters each
                    # record by identity instead: then it must never deliver one.
                    assert (route, status) == ("bets", 403), (route, who, granted)
                    must_not_receive.append(mqtt)

        # -- publish: HTTP POST and MQTT PUBLISH (QoS 1), per route and identity -------------
        accepted: dict[str, set[bytes]] = {route: set() for route in MATRIX}
        for route, (param, publisher, _) in MATRIX.items():
            topic, path = addresses(s, route, param)
            for who in [publisher, *DENIED[route]["publish"]]:
                body = f'{{"by": "{who}", "via": "http", "route": "{route}"}}'.encode()
                headers = {"content-type": "application/json"}
                if tokens[who] is not None:
                    headers["authorization"] = f"Bearer {tokens[who]}"
                answer = await http.post(path, content=body, headers=headers)
                mqtt = await mqtt_client(mqtt_port, tokens[who])
                clients.append(mqtt)
                payload = f'{{"by": "{who}", "via": "mqtt", "route": "{route}"}}'.encode()
                puback = await mqtt.publish(topic, payload, qos=1)
                if who == publisher:
                    assert answer.status_code < 300, (route, who, answer.text)
                    assert puback == 0, (route, who, puback)
                    accepted[route] |= {body, payload}
                else:
                    status = DENIED[route]["publish"][who]
                    assert answer.status_code == status, (route, who, answer.text)
                    assert puback == NOT_AUTHORIZED, (route, who, puback)

        # -- Kafka holds exactly the allowed records; allowed subscribers got them ----------
        for route, wanted in accepted.items():
            topic = next(r.topic for r in bridge.config.routes if r.name == route)
            stored = await read_topic(kafka_bootstrap, topic, len(wanted))
            assert sorted(stored) == sorted(wanted), (route, stored)
            stream, mqtt = listeners[route]
            seen_sse = {(await asyncio.wait_for(stream.events.get(), 15)).data.encode()}
            while len(seen_sse) < len(wanted):
                seen_sse.add((await asyncio.wait_for(stream.events.get(), 15)).data.encode())
            assert seen_sse == wanted
            assert {m.payload for m in await mqtt.get_many(len(wanted))} == wanted
        for refused in must_not_receive:
            await refused.nothing_more(1.0)
        for stream in streams:
            await stream.close()
        for client in clients:
            await client.disconnect()


BAD = {
    "expired": lambda: token("alice", "bettor", ttl=-60),
    "wrong-audience": lambda: token("alice", "bettor", aud="someone-else"),
    "bad-signature": lambda: token("alice", "bettor", secret="another-secret-another-secret-xx"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
async def test_bad_tokens_are_refused_by_every_protocol(
    matrix_bridge: Any, kafka_bootstrap: str, kind: str
) -> None:
    bridge, s = matrix_bridge, matrix_bridge.s
    bad = BAD[kind]()
    _topic, path = addresses(s, "bets", "alice")
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=15) as http:
        answer = await http.post(
            path,
            content=b'{"stake": 1}',
            headers={"authorization": f"Bearer {bad}", "content-type": "application/json"},
        )
        assert answer.status_code == 401, answer.text
        assert 'error="invalid_token"' in answer.headers["www-authenticate"]
        stream = SseStream(http, f"{path}?access_token={bad}", None)
        response = await stream.response()
        assert response.status_code == 401, response.text
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        await stream.close()
    mqtt_port = bridge.frontend("mqtt").port
    client = Paho(mqtt_port, client_id=f"bad-{uuid.uuid4().hex[:6]}", version=5)
    connack = await client.connect(auth=("device", bad))
    assert connack[1] == BAD_CREDENTIALS, connack
    await client.disconnect()
    # MQTT 3.1.1 on the wire (paho would translate the code): CONNACK return code 4.
    assert await connect_311(mqtt_port, "device", bad) == bytes([0x20, 0x02, 0x00, 0x04])
    bets = next(r.topic for r in bridge.config.routes if r.name == "bets")
    assert await read_topic(kafka_bootstrap, bets, 0, settle_s=1.0) == []


async def test_connections_close_when_their_token_expires(matrix_bridge: Any) -> None:
    bridge, s = matrix_bridge, matrix_bridge.s
    short = token("alice", "bettor", ttl=2)
    _topic, path = addresses(s, "bets", "alice")
    mqtt = await mqtt_client(bridge.frontend("mqtt").port, short)
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=30) as http:
        stream = SseStream(http, path, short)
        assert (await stream.response()).status_code == 200
        await asyncio.wait_for(stream.ended.wait(), 20)
        await stream.close()
    assert await mqtt.wait_disconnected(20) == MAX_CONNECT_TIME


async def test_http_fetch_and_mqtt_over_websocket_follow_the_same_rules(
    matrix_bridge: Any, kafka_bootstrap: str
) -> None:
    """The two remaining ways in: HTTP fetch (GET of a table) and MQTT over WebSocket, whose
    token rides on the upgrade request."""
    bridge, s = matrix_bridge, matrix_bridge.s
    profiles = next(r.topic for r in bridge.config.routes if r.name == "profile")
    producer, _ = bridge.kafka
    await producer.send(Message(profiles, b"alice", b'{"balance": 100}'))
    tokens = {who: make() for who, make in TOKENS.items()}
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=15) as http:
        path = f"/mx{s}/users/alice/profile"
        deadline = time.monotonic() + 15
        while True:  # the table feed reads the record it was created after
            mine = await http.get(path, headers={"authorization": f"Bearer {tokens['alice']}"})
            if mine.status_code != 404 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert mine.status_code == 200 and mine.json() == {"balance": 100}, mine.text
        theirs = await http.get(path, headers={"authorization": f"Bearer {tokens['bob']}"})
        assert theirs.status_code == 403, theirs.text
        nobody = await http.get(path)
        assert nobody.status_code == 401 and nobody.headers["www-authenticate"].startswith("Bearer")

    scores_topic, _ = addresses(s, "scores", "m1")
    results = {}
    for who in ("board", "fan", "anonymous"):
        client = Paho(
            bridge.web.port, client_id=f"ws-{uuid.uuid4().hex[:6]}", transport="websockets"
        )
        if tokens[who] is not None:
            client.client.ws_set_options(
                path="/mqtt", headers={"Authorization": f"Bearer {tokens[who]}"}
            )
        connack = await client.connect()
        assert connack[1] == 0, (who, connack)
        results[who] = await client.publish(scores_topic, f"ws-{who}".encode(), qos=1)
        await client.disconnect()
    assert results == {"board": 0, "fan": NOT_AUTHORIZED, "anonymous": NOT_AUTHORIZED}
    scores = next(r.topic for r in bridge.config.routes if r.name == "scores")
    assert await read_topic(kafka_bootstrap, scores, 1) == [b"ws-board"]

    bad = BAD["expired"]()
    client = Paho(bridge.web.port, client_id=f"ws-{uuid.uuid4().hex[:6]}", transport="websockets")
    client.client.ws_set_options(path="/mqtt", headers={"Authorization": f"Bearer {bad}"})
    connack = await client.connect()
    assert connack[1] == BAD_CREDENTIALS, connack
    await client.disconnect()
