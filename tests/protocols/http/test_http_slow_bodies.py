"""Bodies that never arrive, and bodies that are too large, over raw sockets: each is answered
with its status and a problem document, closes only its own connection, and produces nothing."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

ROUTES = """
[[routes]]
name = "note"
topic = "{topic}"
key = "{{match}}"
[[routes.http]]
method = "PUT"
path = "/matches/{{match}}/note"
idempotency = "off"
max_body_bytes = 1000
"""


@pytest.fixture
async def bridge(bridge_factory, new_topic):
    topic = await new_topic()
    bridge = await bridge_factory(
        ROUTES.format(topic=topic), frontends=["http"], http_options="body_timeout_s = 1"
    )
    bridge.topic = topic
    return bridge


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def test_a_body_that_stops_arriving_is_408_and_closes_only_its_connection(
    bridge, read_all
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.web.port)
    writer.write(
        b"PUT /matches/m1/note HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n" + b"0123456789"
    )
    await writer.drain()
    # Meanwhile another client is served as usual.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}") as client:
        ok = await client.put("/matches/m2/note", content=b"fine")
    assert ok.status_code == 202, ok.text
    status, headers, body = await answer(reader)
    assert status == 408
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["type"].endswith("/request-timeout")
    assert await asyncio.wait_for(reader.read(), 10) == b""  # that connection is closed
    writer.close()
    assert [r.value for r in await read_all(bridge.topic)] == [b"fine"]


async def test_a_chunked_body_that_stalls_is_408(bridge, read_all) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.web.port)
    writer.write(
        b"PUT /matches/m1/note HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n"
    )
    await writer.drain()
    status, _, body = await answer(reader)
    assert status == 408 and json.loads(body)["status"] == 408
    writer.close()
    assert await read_all(bridge.topic) == []


async def test_a_streamed_body_over_the_limit_is_413_naming_the_limit(bridge, read_all) -> None:
    big = b"x" * 3_000_000  # dropped by the listener while it closes, so the client reads the 413

    async def chunks():
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}") as client:
        response = await client.put("/matches/m1/note", content=chunks())
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "max_body_bytes of 1000 bytes" in detail
    assert "65524" not in detail and "bytes exceeds" not in detail.split("max_body_bytes")[0]
    assert await read_all(bridge.topic) == []
