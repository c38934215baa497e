"""CORS, decided once for HTTP routes and event streams: credentials only for listed origins,
"*" for any other origin without credentials, preflights naming only what the path allows.
httpx for the header matrix, Chromium from two real origins for what a browser then does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

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

[[routes]]
name = "odds"
topic = "{topic}"
[routes.sse]
path = "/odds"
"""


@pytest.fixture
async def bridge(bridge_factory, new_topic) -> AsyncIterator[Any]:
    topic = await new_topic()
    yield await bridge_factory(
        ROUTES.format(topic=topic),
        frontends=["http", "sse"],
        cors_origins=("https://listed.example", "*"),
    )


async def test_a_listed_origin_gets_credentials_any_other_only_a_star(bridge) -> None:
    base = f"http://127.0.0.1:{bridge.web.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        listed = await client.put(
            "/matches/m1/note", content=b"x", headers={"origin": "https://listed.example"}
        )
        assert listed.headers["access-control-allow-origin"] == "https://listed.example"
        assert listed.headers["access-control-allow-credentials"] == "true"
        assert "origin" in listed.headers["vary"].lower()
        other = await client.put(
            "/matches/m1/note", content=b"x", headers={"origin": "https://evil.example"}
        )
        assert other.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in other.headers
        for origin in ("https://listed.example", "https://evil.example"):
            stream = await client.options(
                "/odds", headers={"origin": origin, "access-control-request-method": "GET"}
            )
            assert stream.status_code == 204
            assert stream.headers["access-control-allow-methods"] == "GET, HEAD, OPTIONS"
            credentials = stream.headers.get("access-control-allow-credentials")
            assert credentials == ("true" if origin == "https://listed.example" else None)


async def test_a_preflight_names_only_the_methods_of_that_path(bridge) -> None:
    base = f"http://127.0.0.1:{bridge.web.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        preflight = await client.options(
            "/matches/m1/note",
            headers={"origin": "https://listed.example", "access-control-request-method": "PUT"},
        )
    assert preflight.status_code == 204
    methods = {m.strip() for m in preflight.headers["access-control-allow-methods"].split(",")}
    assert methods == {"PUT", "OPTIONS"}


async def test_without_a_star_an_unlisted_origin_gets_no_cors_at_all(
    bridge_factory, new_topic
) -> None:
    topic = await new_topic()
    bridge = await bridge_factory(
        ROUTES.format(topic=topic), frontends=["http"], cors_origins=("https://listed.example",)
    )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}") as client:
        response = await client.put(
            "/matches/m1/note", content=b"x", headers={"origin": "https://evil.example"}
        )
    assert not [h for h in response.headers if h.startswith("access-control-")]


class Page:
    """A tiny page server on its own port: its own origin, as a foreign web site would be."""

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = b"<!doctype html><title>page</title>"
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        self.server.close()


FETCH = """async ([url, credentials]) => {
  try {
    const response = await fetch(url, {method: "PUT", body: "x", credentials});
    return response.status;
  } catch (error) {
    return "blocked";
  }
}"""


async def test_chromium_from_two_origins(bridge_factory, new_topic) -> None:
    """The listed page may send credentials; another page may call without them, and the
    browser blocks it as soon as it asks for credentials."""
    from playwright.async_api import async_playwright

    listed_page, other_page = Page(), Page()
    listed_port, other_port = await listed_page.start(), await other_page.start()
    listed_origin = f"http://127.0.0.1:{listed_port}"
    topic = await new_topic()
    bridge = await bridge_factory(
        ROUTES.format(topic=topic), frontends=["http"], cors_origins=(listed_origin, "*")
    )
    url = f"http://127.0.0.1:{bridge.web.port}/matches/m1/note"
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                page = await browser.new_page()
                await page.goto(listed_origin + "/")
                assert await page.evaluate(FETCH, [url, "include"]) == 202
                assert await page.evaluate(FETCH, [url, "omit"]) == 202
                await page.goto(f"http://localhost:{other_port}/")  # another origin
                assert await page.evaluate(FETCH, [url, "omit"]) == 202
                assert await page.evaluate(FETCH, [url, "include"]) == "blocked"
            finally:
                await browser.close()
    finally:
        listed_page.close()
        other_page.close()
