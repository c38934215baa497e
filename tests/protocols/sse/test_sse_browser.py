"""A real browser: headless Chromium's own EventSource reconnects with Last-Event-ID after the
bridge drops its stream, and the page's list has no gap and no duplicate.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the Python ``playwright`` package;
never ``playwright install`` (it downloads another browser).
"""

from __future__ import annotations

import asyncio
import shutil

import playwright.async_api as playwright_api
from sse_support import base_url, produce, until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

COUNT = 120

ROUTES = """
[[routes]]
name = "odds"
topic = "{topic}"
key = "{{match}}"

[routes.sse]
path = "/matches/{{match}}/odds"
event = "odds"
retry_ms = 30
"""

PAGE = """<!doctype html>
<title>odds</title>
<script>
  window.received = [];
  window.opens = 0;
  window.errors = 0;
  const source = new EventSource("/matches/8/odds");
  source.addEventListener("odds", (event) => window.received.push(event.data));
  source.onopen = () => { window.opens += 1; };
  source.onerror = () => { window.errors += 1; };
</script>
"""


async def test_chromium_event_source_resumes_without_gap_or_duplicate(
    bridge_factory, new_topic
) -> None:
    topic = await new_topic(partitions=2)
    # docs: /asyncapi.json on the same listener, fetched by the page beside its EventSource.
    bridge = await bridge_factory(ROUTES.format(topic=topic), frontends=["sse", "docs"])
    frontend = bridge.frontend("sse")
    url = base_url(bridge)
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page()
            # The page comes from the listener's own origin; its EventSource talks to the real
            # bridge (a chunked HTTP/1.1 body from the listener, as Chromium reads it).
            await page.route(
                f"{url}/page.html", lambda route: route.fulfill(body=PAGE, content_type="text/html")
            )
            await page.goto(f"{url}/page.html")
            await page.wait_for_function("window.opens >= 1", timeout=15000)
            await until(lambda: len(frontend.streams) == 1)
            expected = [f"odds-{i}" for i in range(COUNT)]
            drops = 0
            for index, value in enumerate(expected):
                await produce(bridge, topic, [value], key="8")
                if index % 15 == 7:
                    drops += frontend.drop_streams()
                await asyncio.sleep(0.005)
            await page.wait_for_function(f"window.received.length >= {COUNT}", timeout=30000)
            await asyncio.sleep(0.2)  # anything extra (a duplicate) would arrive now
            received = await page.evaluate("window.received")
            opens = await page.evaluate("window.opens")
            # fetch on the same origin while the stream is open: one listener serves both.
            fetched = await page.evaluate(
                "fetch('/asyncapi.json').then(async r => [r.status, (await r.json()).asyncapi])"
            )
        finally:
            await browser.close()
    assert received == expected
    assert fetched == [200, "3.0.0"]
    assert drops >= 6 and opens >= drops
    assert frontend.metrics.resumed >= drops
