"""The lean SSE listener's own HTTP/1.1 edge: bad request heads, HEAD, configuration, and what it
keeps per connection. Stream semantics run on both listeners in the other SSE test files (the
``sse_listener`` fixture); these are the parts only the lean listener has."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sse_support import LEAN_LISTENER, EventParser, base_url, produce, stream_port, until

from bridge.model.config import ConfigError, parse_config
from protocols.sse import lean
from protocols.sse.request_head import MAX_HEAD_BYTES, BadHead, head_length, parse_head

PROTOCOLS = Path(lean.__file__).parents[1]  # coroutines of the bridge's front-ends

ROUTES = """
[[routes]]
name = "odds"
topic = "{topic}"
key = "{{match}}"

[routes.sse]
path = "/matches/{{match}}/odds"
heartbeat_s = 0
"""


@pytest.fixture
async def lean_bridge(bridge_factory, new_topic):
    topic = await new_topic()
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["sse"], **LEAN_LISTENER)
    return bridge, topic


async def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def problem_of(response: bytes) -> tuple[int, dict[str, str], dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    assert headers["content-type"] == "application/problem+json"
    assert int(headers["content-length"]) == len(body)
    return int(status_line.split()[1]), headers, json.loads(body)


async def open_raw_stream(port: int, path: str):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    return reader, writer


async def joined(reader: asyncio.StreamReader, parser: EventParser) -> None:
    """Read up to the stream's starting position: the bridge has subscribed by then."""
    while not parser.last_id:
        parser.feed(await asyncio.wait_for(reader.read(65536), 10))


async def read_events(reader: asyncio.StreamReader, parser: EventParser, count: int) -> list:
    events: list = []
    while len(events) < count:
        events.extend(parser.feed(await asyncio.wait_for(reader.read(65536), 10)))
    return events


@pytest.mark.parametrize(
    ("request_head", "status", "kind"),
    [
        (b"GARBAGE\r\n\r\n", 400, "bad-request"),
        (b"GET /matches/1/odds HTTP/1.1\r\nno colon here\r\n\r\n", 400, "bad-request"),
        (b"GET http://elsewhere/matches/1/odds HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad-request"),
        (
            b"GET /matches/1/odds HTTP/1.1\r\nX: " + b"y" * MAX_HEAD_BYTES,
            431,
            "request-head-too-large",
        ),
    ],
    ids=["garbage", "bad-header", "absolute-form", "oversized"],
)
async def test_a_bad_request_head_closes_only_its_own_connection(
    lean_bridge, request_head: bytes, status: int, kind: str
) -> None:
    bridge, topic = lean_bridge
    port = stream_port(bridge)
    reader, writer = await open_raw_stream(port, "/matches/1/odds")
    parser = EventParser()
    try:
        await joined(reader, parser)
        response = await exchange(port, request_head)
        got_status, _, problem = problem_of(response)
        assert (got_status, problem["status"]) == (status, status)
        assert problem["type"].endswith("/" + kind)
        assert problem["detail"]
        # The open stream on the same listener is untouched.
        await produce(bridge, topic, ["after the bad request"], key="1")
        events = await read_events(reader, parser, 1)
        assert [e.data for e in events] == ["after the bad request"]
    finally:
        writer.close()
    assert bridge.frontend("sse").metrics.streams_refused == 1


async def test_a_client_that_never_finishes_its_head_is_closed(lean_bridge, monkeypatch) -> None:
    bridge, _ = lean_bridge
    monkeypatch.setattr(lean, "HEAD_TIMEOUT_S", 0.3)
    response = await exchange(stream_port(bridge), b"GET /matches/1/odds HTTP/1.1\r\nHost:")
    status, _, problem = problem_of(response)
    assert status == 408
    assert problem["type"].endswith("/request-timeout")


async def test_bytes_after_the_head_are_ignored_and_the_stream_goes_on(lean_bridge) -> None:
    bridge, topic = lean_bridge
    reader, writer = await open_raw_stream(stream_port(bridge), "/matches/2/odds")
    parser = EventParser()
    try:
        await joined(reader, parser)
        writer.write(b"POST / HTTP/1.1\r\n\r\n\x00\xff" * 100)  # pipelined junk, never answered
        await produce(bridge, topic, ["one", "two"], key="2")
        events = await read_events(reader, parser, 2)
    finally:
        writer.close()
    assert [e.data for e in events] == ["one", "two"]


async def test_head_gets_the_stream_headers_and_no_body(lean_bridge) -> None:
    bridge, _ = lean_bridge
    response = await exchange(
        stream_port(bridge), b"HEAD /matches/1/odds HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: text/event-stream; charset=utf-8" in head
    assert body == b""


async def test_a_lean_stream_needs_one_task_and_ends_when_its_client_goes(lean_bridge) -> None:
    """Hypercorn's path needs a second task per stream to learn of a disconnect; the lean
    listener learns it from connection_lost."""
    bridge, _ = lean_bridge
    frontend = bridge.frontend("sse")
    before = asyncio.all_tasks()
    async with httpx.AsyncClient(base_url=base_url(bridge), timeout=10) as client:
        responses = []
        for match in range(5):
            request = client.build_request("GET", f"/matches/{match}/odds")
            responses.append(await client.send(request, stream=True))
        await until(lambda: len(frontend.streams) == 5)
        server_tasks = sorted(
            t.get_coro().__qualname__
            for t in asyncio.all_tasks() - before
            if t.get_coro().cr_code.co_filename.startswith(str(PROTOCOLS))
        )
        assert server_tasks == ["LeanConnection._run"] * 5
        assert all(s.writes_directly for s in frontend.streams)
        for response in responses:
            await response.aclose()
    await until(lambda: not frontend.streams and not frontend.channels, what="streams released")


async def test_stopping_the_bridge_ends_lean_streams(lean_bridge) -> None:
    bridge, _ = lean_bridge
    reader, writer = await open_raw_stream(stream_port(bridge), "/matches/3/odds")
    try:
        await joined(reader, EventParser())
        await bridge.frontend("sse").stop()
        assert await asyncio.wait_for(reader.read(), 10) is not None  # EOF, not a hang
        assert reader.at_eof()
    finally:
        writer.close()


def test_the_lean_listener_is_off_unless_configured(tmp_path) -> None:
    def load(listeners: str):
        text = f"{listeners}\n[[routes]]\nname = 'r'\ntopic = 't'\n[routes.sse]\npath = '/r'\n"
        return parse_config(text, tmp_path / "routing.toml", {})

    assert load("").sse_listener is None
    assert load("[listeners.sse]\nenabled = false").sse_listener is None
    settings = load("[listeners.sse]\nport = 9999\ncors_origins = ['https://a']").sse_listener
    assert (settings.host, settings.port) == ("127.0.0.1", 9999)
    assert settings.options["cors_origins"] == ["https://a"]
    with pytest.raises(ConfigError, match="tls_cert"):
        load("[listeners.sse]\ntls_cert = 'x.pem'")


NEAR_HEADS = st.builds(
    lambda method, target, headers: method + b" " + target + b" HTTP/1.1\r\n" + headers,
    st.sampled_from([b"GET", b"HEAD", b"POST", b"G\x00T", b""]),
    st.binary(max_size=64).map(lambda b: b"/" + b),
    st.lists(st.binary(max_size=40).map(lambda b: b + b"\r\n"), max_size=6).map(
        lambda lines: b"".join(lines) + b"\r\n"
    ),
)


@given(st.one_of(st.binary(max_size=MAX_HEAD_BYTES + 64), NEAR_HEADS))
def test_any_bytes_give_a_scope_or_a_bad_head_never_another_error(data: bytes) -> None:
    try:
        length = head_length(data)
        if length:
            scope = parse_head(data[:length], ("127.0.0.1", 1))
            assert scope["path"].startswith("/")
    except BadHead as bad:
        assert bad.status in (400, 431) and bad.detail
