"""SSE at the edges: slow clients, access control, streams that outlive server timeouts, HTTP/2."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from sse_support import EventParser, base_url, produce, read_events, until

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
    port = bridge.web.port
    # A client that asks for the stream and then never reads, with a tiny receive window.
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /matches/1/odds HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        await until(lambda: len(frontend.streams) >= 1)
        reading = asyncio.create_task(read_events(client, "/matches/1/odds", COUNT, timeout=60))
        await until(lambda: len(frontend.streams) >= 2)
        # Far more than the socket buffers between the bridge and the stalled client hold.
        big = "x" * 16 * 1024
        await produce(bridge, topic, [f"{i}:{big}" for i in range(COUNT)], key="1")
        events, _ = await reading
        stuck = [s for s in frontend.streams if s.reason == "slow_client"]
        assert len(stuck) == 1 and stuck[0].chunks == [], "closed at once, its buffer dropped"
        # Its write is interrupted and the response ended (or abandoned) within a bounded time.
        for _ in range(500):
            if stuck[0] not in frontend.streams:
                break
            await asyncio.sleep(0.02)
    assert [e.data.split(":")[0] for e in events] == [str(i) for i in range(COUNT)]
    assert frontend.metrics.slow_client_closes == 1
    assert stuck[0] not in frontend.streams
    stalled.close()


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


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_many_streams_share_one_http2_connection(
    bridge_factory, new_topic, tmp_path: Path
) -> None:
    """Browsers cap HTTP/1.1 at 6 streams per host; over HTTP/2 (TLS, ALPN h2) they multiplex."""
    pytest.importorskip("h2")
    topic = await new_topic(partitions=2)
    cert, key = self_signed(tmp_path)
    bridge = await bridge_factory(
        ROUTES.format(topic=topic),
        frontends=["sse"],
        extra=f'tls_cert = "{cert}"\ntls_key = "{key}"',
    )
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{bridge.web.port}"
    async with httpx.AsyncClient(base_url=url, http2=True, verify=context, timeout=10) as client:
        matches = [str(i) for i in range(10)]  # more than HTTP/1.1's six
        readers = [
            asyncio.create_task(read_events(client, f"/matches/{m}/odds", 2)) for m in matches
        ]
        await until(lambda: len(bridge.frontend("sse").streams) >= len(matches))
        for match in matches:
            await produce(bridge, topic, [f"{match}-a", f"{match}-b"], key=match)
        results = await asyncio.gather(*readers)
        probe = await client.get("/matches/0/odds", headers={"Last-Event-ID": "bad"})
    assert probe.http_version == "HTTP/2"
    for match, (events, _) in zip(matches, results, strict=True):
        assert [e.data for e in events] == [f"{match}-a", f"{match}-b"]
