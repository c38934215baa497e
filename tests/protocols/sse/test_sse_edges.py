"""SSE at the edges: slow clients, access control, streams that outlive server timeouts, HTTP/2."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import httpx
from sse_support import EventParser, base_url, produce, read_events, stream_port, until
from tls_certs import self_signed

ROUTES = """
[[routes]]
name = "odds"
topic = "{topic}"
key = "{{match}}"

[routes.sse]
path = "/matches/{{match}}/odds"
event = "odds"
max_buffer_bytes = 4096
heartbeat_s = 0

[[routes]]
name = "my-bets"
topic = "{topic}"
key = "{{user}}"

[routes.sse]
path = "/users/{{user}}/bets"

[routes.access]
subscribe = ["bettor"]
identity = "user"
"""


COUNT = 600


async def test_a_slow_client_is_closed_and_never_slows_the_others(
    bridge_factory, new_topic
) -> None:
    topic = await new_topic()
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["sse"])
    frontend = bridge.frontend("sse")
    before = sample("edgebridge_slow_client_disconnects_total", protocol="sse")
    # A client that asks for the stream and then never reads, with a tiny receive window.
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stalled.connect(("127.0.0.1", stream_port(bridge)))
        stalled.sendall(
            b"GET /matches/1/odds HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
            await until(lambda: len(frontend.streams) >= 1)
            reading = asyncio.create_task(read_events(client, "/matches/1/odds", COUNT, timeout=60))
            await until(lambda: len(frontend.streams) >= 2)
            # Far more than the socket buffers between the bridge and the stalled client hold.
            big = "x" * 16 * 1024
            await produce(bridge, topic, [f"{i}:{big}" for i in range(COUNT)], key="1")
            events, _ = await reading
            await until(lambda: frontend.metrics.slow_client_closes == 1, what="slow client closed")
            # Closed and counted; once the healthy reader has gone too, nothing is left.
            await until(lambda: not frontend.streams, what="every stream released")
            assert sample("edgebridge_slow_client_disconnects_total", protocol="sse") == before + 1
    finally:
        stalled.close()
    assert [e.data.split(":")[0] for e in events] == [str(i) for i in range(COUNT)]


async def test_protected_stream_without_a_token_is_401(bridge_factory, new_topic) -> None:
    topic = await new_topic()
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["sse"])
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        response = await client.get("/users/alice/bets", headers={"Accept": "text/event-stream"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.headers["content-type"] == "application/problem+json"
        assert "requires a token" in response.json()["detail"]
        malformed = await client.get("/users/alice/bets", headers={"Authorization": "Basic abc"})
        assert malformed.status_code == 401
        assert malformed.json()["type"].endswith("/bad-authorization")
    assert bridge.frontend("sse").metrics.streams_opened == 0


async def test_a_stream_outlives_quart_and_hypercorn_timeouts(bridge_factory, new_topic) -> None:
    """Quart's RESPONSE_TIMEOUT (60 s) and Hypercorn's idle timeouts must not cut a stream that
    is silent (no heartbeats on this route) for longer than any of them."""
    topic = await new_topic()
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["sse"])
    quiet_s = 65
    async with httpx.AsyncClient(
        base_url=base_url(bridge), timeout=httpx.Timeout(10, read=None)
    ) as client:
        async with client.stream(
            "GET", "/matches/1/odds", headers={"Accept": "text/event-stream"}
        ) as response:
            parser = EventParser()
            chunks = response.aiter_raw()
            parser.feed(await anext(chunks))
            await asyncio.sleep(quiet_s)
            await produce(bridge, topic, ["still here"], key="1")
            events = parser.feed(await asyncio.wait_for(anext(chunks), 10))
    assert [e.data for e in events] == ["still here"]


async def test_many_streams_share_one_http2_connection(
    bridge_factory, new_topic, tmp_path: Path
) -> None:
    """Browsers cap HTTP/1.1 at 6 streams per host; over HTTP/2 (TLS, ALPN h2) they multiplex."""
    topic = await new_topic(partitions=2)
    cert, key = self_signed(tmp_path)
    bridge = await bridge_factory(
        ROUTES.format(topic=topic),
        frontends=["sse"],
        extra=f'tls_cert = "{cert}"\ntls_key = "{key}"\nhttp2 = true',
    )
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{bridge.web.port}"
    async with httpx.AsyncClient(base_url=url, http2=True, verify=context, timeout=10) as client:
        matches = [str(i) for i in range(10)]  # more than HTTP/1.1's six
        readers = [
            asyncio.create_task(read_events(client, f"/matches/{m}/odds", 2)) for m in matches
        ]
        await until(lambda: len(bridge.frontend("sse").streams) >= len(matches))
        assert not any(s.writes_directly for s in bridge.frontend("sse").streams)  # h2: ASGI
        for match in matches:
            await produce(bridge, topic, [f"{match}-a", f"{match}-b"], key=match)
        results = await asyncio.gather(*readers)
        probe = await client.get("/matches/0/odds", headers={"Last-Event-ID": "bad"})
    assert probe.http_version == "HTTP/2"
    for match, (events, _) in zip(matches, results, strict=True):
        assert [e.data for e in events] == [f"{match}-a", f"{match}-b"]


SECRET = "sse-test-secret-sse-test-secret-sse-test"


def token(user: str, ttl: float, roles: tuple[str, ...] = ("bettor",)) -> str:
    import jwt

    now = time.time()
    claims = {"sub": user, "scope": " ".join(roles), "iat": int(now), "exp": now + ttl}
    claims |= {"iss": "sse-test", "aud": "edgebridge"}
    return jwt.encode(claims, SECRET, algorithm="HS256")


GUARDED = f"""
[guard]
secret = "{SECRET}"
issuer = "sse-test"
audience = "edgebridge"
leeway_s = 0
"""


async def test_tokens_from_the_query_string_identity_and_expiry(bridge_factory, new_topic) -> None:
    topic = await new_topic()
    bridge = await bridge_factory(GUARDED + ROUTES.format(topic=topic), frontends=["sse"])
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        # EventSource cannot set headers: ?access_token= is how a browser presents a token.
        other = await client.get(f"/users/bob/bets?access_token={token('alice', 60)}")
        assert other.status_code == 403
        assert other.json()["type"].endswith("/forbidden")
        bad = await client.get("/users/alice/bets?access_token=not-a-jwt")
        assert bad.status_code == 401
        assert 'error="invalid_token"' in bad.headers["www-authenticate"]
        # A stream whose token expires gets an `error` event, then a clean end.
        short = token("alice", 1.5)
        async with client.stream("GET", f"/users/alice/bets?access_token={short}") as response:
            assert response.status_code == 200
            parser, events = EventParser(), []
            async for chunk in response.aiter_raw():
                events.extend(parser.feed(chunk))
    assert [(e.event, e.data) for e in events] == [("error", "token expired")]


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_follow_real_streams(bridge_factory, new_topic) -> None:
    topic = await new_topic()
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["sse"])
    before_open = sample("edgebridge_connections", protocol="sse")
    before_resumed = sample("edgebridge_sessions_resumed_total", protocol="sse")
    before_out = sample("edgebridge_messages_out_total", route="odds", protocol="sse")
    before_refused = sample(
        "edgebridge_rejections_total", protocol="sse", reason="bad_last_event_id"
    )
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        reading = asyncio.create_task(read_events(client, "/matches/4/odds", 3))
        await until(lambda: sample("edgebridge_connections", protocol="sse") == before_open + 1)
        await produce(bridge, topic, ["a", "b", "c"], key="4")
        events, _ = await reading
        await read_events(client, "/matches/4/odds", 1, {"Last-Event-ID": events[1].id})
        await client.get("/matches/4/odds", headers={"Last-Event-ID": "nope"})
    await until(lambda: sample("edgebridge_connections", protocol="sse") == before_open)
    await until(
        lambda: (
            sample("edgebridge_messages_out_total", route="odds", protocol="sse") >= before_out + 4
        )
    )
    assert sample("edgebridge_sessions_resumed_total", protocol="sse") == before_resumed + 1
    assert (
        sample("edgebridge_rejections_total", protocol="sse", reason="bad_last_event_id")
        == before_refused + 1
    )


async def test_cleartext_http2_with_prior_knowledge(bridge_factory, new_topic) -> None:
    """h2c (no TLS) for proxies and service meshes that speak HTTP/2 to the bridge (http2 = true)."""
    topic = await new_topic()
    bridge = await bridge_factory(
        ROUTES.format(topic=topic), frontends=["sse"], extra="http2 = true"
    )
    async with httpx.AsyncClient(base_url=base_url(bridge), http1=False, http2=True) as client:
        reading = asyncio.create_task(read_events(client, "/matches/5/odds", 1))
        await until(lambda: len(bridge.frontend("sse").streams) == 1)
        await produce(bridge, topic, ["over h2c"], key="5")
        events, _ = await reading
        probe = await client.get("/matches/5/odds", headers={"Last-Event-ID": "bad"})
    assert [e.data for e in events] == ["over h2c"]
    assert probe.http_version == "HTTP/2"


def test_direct_writes_on_uvloop_as_edgebridge_run_uses(kafka_bootstrap, tmp_path: Path) -> None:
    """`edgebridge run` runs on uvloop, whose transports differ from asyncio's: the HTTP/1.1
    shortcut must still apply there, and events must still arrive intact."""
    import uvloop
    from harness import start_bridge

    from bridge.kafka.topic_admin import ensure_topics
    from bridge.model.config import KafkaSettings, TopicSpec

    async def main() -> tuple[bool, list[str]]:
        topic = f"uv-{time.time_ns()}"
        await ensure_topics(KafkaSettings(), kafka_bootstrap, [TopicSpec(topic)])
        bridge = await start_bridge(ROUTES.format(topic=topic), kafka_bootstrap, ["sse"])
        try:
            async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
                reading = asyncio.create_task(read_events(client, "/matches/1/odds", 3))
                await until(lambda: len(bridge.frontend("sse").streams) == 1)
                (stream,) = bridge.frontend("sse").streams
                await until(lambda: stream.writes_directly)
                direct = stream.writes_directly  # (the stream ends as soon as its client leaves)
                await produce(bridge, topic, ["a", "b\nc", "d"], key="1")
                events, _ = await reading
            return direct, [e.data for e in events]
        finally:
            await bridge.stop()

    direct, data = uvloop.run(main())
    assert direct
    assert data == ["a", "b\nc", "d"]


ONE_ORIGIN = """
[[routes]]
name = "odds"
topic = "{topic}"
key = "{{match}}"

[routes.sse]
path = "/matches/{{match}}/odds"
start = "earliest"
heartbeat_s = 0

[routes.http]
method = "POST"
path = "/matches/{{match}}/odds"
idempotency = "off"
"""


async def test_a_produce_then_a_stream_on_the_same_keep_alive_connection(
    bridge_factory, new_topic
) -> None:
    """One listener serves both: a POST and then an event-stream GET travel on one HTTP/1.1
    connection, and the stream carries the record the POST produced."""
    topic = await new_topic()
    bridge = await bridge_factory(ONE_ORIGIN.format(topic=topic), frontends=["http", "sse"])
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.web.port)
    try:
        body = b'{"home": 1.5}'
        writer.write(
            b"POST /matches/7/odds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.split()[1] in (b"200", b"201", b"202"), head
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        writer.write(
            b"GET /matches/7/odds HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        parser, events = EventParser(), []
        while not events:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk, "the stream ended"
            events += [e for e in parser.feed(chunk) if e.data]
        assert '"home": 1.5' in events[0].data or '"home":1.5' in events[0].data
    finally:
        writer.close()
