"""`edgebridge demo` end to end in a real browser (Debian's Chromium driven by Playwright).

One demo process (embedded broker, bridge, scoreboards over MQTT, odds engine, bet processor,
the page); the browser sees odds change, places a bet and sees it verified, drops the live
scores stream and sees every score after it resumes. Screenshots go to docs/ for the README.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import free_port

pytestmark = pytest.mark.broker  # starts its own broker or bridges: not in `make test-fast`

REPO = Path(__file__).resolve().parents[2]


def screenshot_dir() -> Path:
    """docs/ when EDGEBRIDGE_SCREENSHOTS=1 (to refresh the README's pictures), else a temp dir,
    so a test run never leaves the checkout modified."""
    if os.environ.get("EDGEBRIDGE_SCREENSHOTS") == "1":
        return REPO / "docs"
    directory = Path(tempfile.gettempdir()) / "edgebridge-screenshots"
    directory.mkdir(exist_ok=True)
    return directory


CHROMIUM = "/usr/bin/chromium"
START_TIMEOUT_S = 90.0  # upper bounds on a shared machine, not performance claims
WAIT_MS = 60_000


class Demo:
    def __init__(self, tmp: Path) -> None:
        self.port, self.mqtt_port, self.admin_port = free_port(), free_port(), free_port()
        self.grpc_port = free_port()  # the partner odds feed's listener (never the fixed 50051)
        self.log = tmp / "demo.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Demo:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("KAFKA_BOOTSTRAP", None)  # the demo starts its own embedded broker
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bridge.process.cli",
                "demo",
                "--port",
                str(self.port),
                "--mqtt-port",
                str(self.mqtt_port),
                "--admin-port",
                str(self.admin_port),
                "--grpc-port",
                str(self.grpc_port),
                "--tick",
                "0.5",
                "--log-format",
                "json",
            ],
            cwd=REPO,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"Open the page" not in self.log.read_bytes():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = Demo(tmp_path_factory.mktemp("demo")).start()
    yield running
    code = running.stop()
    assert code == 0, running.output()  # Ctrl-C stops everything cleanly


def test_the_logs_say_where_to_look_and_how_to_stop(demo: Demo) -> None:
    text = demo.output()
    assert f"Open the page:  http://localhost:{demo.port}" in text
    assert f"http://localhost:{demo.port}/docs" in text
    assert "Ctrl-C" in text
    docs = httpx.get(f"http://127.0.0.1:{demo.port}/docs", timeout=10)
    assert docs.status_code == 200 and "place-bet" in docs.text


async def launch(playwright: Any) -> Any:
    return await playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


async def open_page(
    playwright: Any, demo: Demo, viewport: dict[str, int] | None = None
) -> tuple[Any, Any, list[str]]:
    """Chromium on the demo page: the browser, the page, and the page's uncaught errors."""
    browser = await launch(playwright)
    page = await (browser.new_page(viewport=viewport) if viewport else browser.new_page())
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"http://127.0.0.1:{demo.port}/")
    return browser, page, errors


async def wait_for(page: Any, expression: str, arg: Any = None) -> None:
    await page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)


async def place_a_bet(page: Any) -> None:
    """Tap the odds of a live match and place; accept moved odds like a user would."""
    await page.locator(".match .odds button:not([disabled])").first.click()
    await page.fill("#stake", "25")
    for _ in range(5):
        await page.click("#place")
        await wait_for(page, "!document.querySelector('#place').disabled")
        status = await page.text_content("#slip-status")
        if "Verified" in status:
            return
        assert "Odds moved" in status, status  # anything else is a real failure
    raise AssertionError(f"the bet was never verified: {status}")


def contiguous(minutes: list[int]) -> bool:
    return all(b - a == 1 for a, b in itertools.pairwise(minutes))


async def test_live_odds_a_verified_bet_and_a_resumed_stream(demo: Demo) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser, page, errors = await open_page(playwright, demo, {"width": 1280, "height": 860})

        # Live matches with odds, then odds changing as scores come in.
        await wait_for(page, "window.demo && window.demo.connection === 'live'")
        await wait_for(page, "document.querySelectorAll('.match').length >= 2")
        await wait_for(page, "window.demo.oddsChanges >= 2")
        await wait_for(page, "document.querySelector('#balance').textContent === '1000.00'")

        # A bet placed over HTTP (Idempotency-Key), verified by the bet processor.
        await place_a_bet(page)
        await wait_for(page, "document.querySelector('#bets li[data-status=PENDING]') !== null")
        await wait_for(page, "document.querySelector('#balance').textContent === '975.00'")

        # Drop the live scores stream; while it is away scores keep coming; it resumes from
        # its last event id and every minute of every match is there.
        await wait_for(page, "Object.values(window.demo.scoreLog).some(log => log.length >= 3)")
        before = await page.evaluate("structuredClone(window.demo.scoreLog)")
        await page.click("#drop")
        await wait_for(page, "window.demo.connection === 'reconnecting'")
        await wait_for(page, "window.demo.resumes >= 1")
        assert await page.get_attribute("#connection", "data-state") in ("resumed", "live")
        # Enough new scores that the ones published during the drop are behind us.
        await wait_for(
            page,
            """before => Object.entries(window.demo.scoreLog)
                .filter(([match, log]) => log.length >= (before[match] || []).length + 10)
                .length >= 2""",
            before,
        )
        after = await page.evaluate("structuredClone(window.demo.scoreLog)")
        assert await page.evaluate("window.demo.gaps") == 0
        for match, minutes in after.items():
            assert contiguous(minutes), (match, minutes)
        grown = [m for m in before if len(after.get(m, [])) >= len(before[m]) + 10]
        assert grown, (before, after)

        await page.screenshot(path=str(screenshot_dir() / "demo.png"))
        assert errors == []
        await browser.close()


async def test_the_page_works_at_phone_width(demo: Demo) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await launch(playwright)
        page = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        await page.goto(f"http://127.0.0.1:{demo.port}/")
        await wait_for(
            page, "document.querySelectorAll('.match .odds button:not([disabled])').length >= 2"
        )
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        assert await page.is_visible("#connection") and await page.is_visible("#balance")
        # The GB-only in-play market (routing.toml's jurisdiction): offered to the demo user (the
        # instance is in gb), refused with 451 to a visitor whose token says France.
        await wait_for(page, "document.querySelector('#regional-you').dataset.status === '200'")
        await wait_for(page, "document.querySelector('#regional-visitor').dataset.status === '451'")
        assert "not offered" in await page.text_content("#regional-visitor")
        await asyncio.sleep(0)  # let the last frame paint before the picture
        await page.screenshot(path=str(screenshot_dir() / "demo-phone.png"))
        await browser.close()


async def test_the_second_odds_provider_is_shown_in_the_house_shape(demo: Demo) -> None:
    """OddsCo publishes percentages over MQTT; the page reads /odds and shows its prices as
    decimal odds beside the house's, for the same match (one topic, one shape)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser, page, errors = await open_page(playwright, demo, {"width": 1280, "height": 860})
        await wait_for(page, "window.demo.prices.oddsco >= 1 && window.demo.prices.house >= 1")
        both = """() => [...document.querySelectorAll('#provider-rows tr')].some(row =>
            /^\\d+\\.\\d\\d \\/ \\d+\\.\\d\\d$/.test(row.querySelector('.house')?.textContent || '')
            && /^\\d+\\.\\d\\d \\/ \\d+\\.\\d\\d$/.test(row.querySelector('.oddsco')?.textContent || ''))"""
        await wait_for(page, both)
        rows = await page.evaluate(
            "[...window.demo.providers].map(([m, r]) => [m, r.house, r.oddsco])"
        )
        priced = [(m, h, o) for m, h, o in rows if h and o]
        assert priced, rows
        for _, house, oddsco in priced:
            for odds in (house, oddsco):
                assert set(odds) == {"home", "away"}  # the same shape from both providers
                assert all(isinstance(v, float | int) and 1.01 <= v <= 1000 for v in odds.values())
        assert errors == []
        await browser.close()


async def test_a_bet_whose_answer_is_lost_is_retried_with_the_same_key_and_placed_once(
    demo: Demo,
) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await launch(playwright)
        page = await browser.new_page()
        sent: list[str | None] = []

        async def lose_first_answer(route: Any) -> None:
            sent.append(await route.request.header_value("idempotency-key"))
            if len(sent) == 1:
                await route.fetch()  # the bridge gets it and answers...
                await route.abort("connectionreset")  # ...but the answer never arrives
            else:
                await route.continue_()

        await page.route("**/bets", lose_first_answer)
        await page.goto(f"http://127.0.0.1:{demo.port}/")
        await wait_for(page, "document.querySelector('#balance').textContent !== '—'")
        balance = float(await page.text_content("#balance"))
        bets_before = await page.evaluate("window.demo.bets.size")
        await page.locator(".match .odds button:not([disabled])").first.click()
        await page.fill("#stake", "40")
        await page.click("#place")
        await wait_for(page, "!document.querySelector('#place').disabled")
        status = await page.text_content("#slip-status")
        if "Odds moved" in status:  # the price changed under us: accept it and try again
            sent.clear()
            await page.click("#place")
            await wait_for(page, "!document.querySelector('#place').disabled")
            status = await page.text_content("#slip-status")
        assert "Verified" in status, status
        assert len(sent) >= 2 and len(set(sent)) == 1 and sent[0], sent
        await wait_for(page, "n => window.demo.bets.size === n + 1", bets_before)
        await wait_for(
            page, "b => document.querySelector('#balance').textContent === b", f"{balance - 40:.2f}"
        )
        await asyncio.sleep(1)  # a second placement, if there were one, would show by now
        assert await page.evaluate("window.demo.bets.size") == bets_before + 1
        await browser.close()


async def test_a_network_cut_is_resumed_by_the_browser_without_a_missed_score(demo: Demo) -> None:
    """The page behind a proxy that resets every connection, like a stadium's mobile network:
    Chromium's own EventSource reconnect (Last-Event-ID) must bring every score back."""
    from playwright.async_api import async_playwright
    from sse_support import KillingProxy

    proxy = await KillingProxy(demo.port).start()
    try:
        async with async_playwright() as playwright:
            browser = await launch(playwright)
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{proxy.port}/")
            await wait_for(page, "window.demo && window.demo.connection === 'live'")
            await wait_for(page, "Object.values(window.demo.scoreLog).some(log => log.length >= 2)")
            before = await page.evaluate("structuredClone(window.demo.scoreLog)")
            assert proxy.kill_all() >= 4  # the page's four event streams, at least
            await wait_for(page, "window.demo.resumes >= 1")
            await wait_for(
                page,
                """before => Object.entries(window.demo.scoreLog)
                    .filter(([match, log]) => log.length >= (before[match] || []).length + 8)
                    .length >= 2""",
                before,
            )
            after = await page.evaluate("structuredClone(window.demo.scoreLog)")
            assert await page.evaluate("window.demo.gaps") == 0
            for match, minutes in after.items():
                assert contiguous(minutes), (match, minutes)
            assert await page.evaluate("window.demo.drops") == 0  # not the button: the network
            await browser.close()
    finally:
        await proxy.stop()


async def test_finished_matches_leave_the_page_and_no_number_shows_as_nan(demo: Demo) -> None:
    """A long-running page does not pile up finished cards (each leaves 20 match-minutes after
    its final whistle), and money is never drawn as NaN or Infinity."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser, page, errors = await open_page(playwright, demo)
        await wait_for(page, "window.demo && window.demo.connection === 'live'")
        for bad in ("NaN", "Infinity", "-Infinity", "'abc'", "null", "undefined"):
            assert await page.evaluate(f"window.demo.money({bad})") == "\u2013", bad  # a dash
        assert await page.evaluate("window.demo.money(25)") == "25.00"
        # A match ends: its card shows COMPLETED, then leaves.
        await page.wait_for_function(
            "[...document.querySelectorAll('.match .status')]"
            ".some(s => s.textContent === 'COMPLETED')",
            timeout=150_000,
        )
        finished = await page.evaluate(
            "[...document.querySelectorAll('.match')]"
            ".find(c => c.querySelector('.status').textContent === 'COMPLETED').dataset.match"
        )
        await page.wait_for_function(
            'id => !document.querySelector(`[data-match="${CSS.escape(id)}"]`)',
            arg=finished,
            timeout=60_000,
        )
        assert "NaN" not in await page.inner_text("body")
        assert errors == []
        await browser.close()
