"""Smoke-test the README's first command, as CI does after the tests: `make demo` from a checkout.

Starts `make demo` in its own process group, waits for the page and for a live score over SSE,
checks the page in headless Chromium (live connection, matches drawn, odds moving, no page
errors), stops it with SIGINT like a person's Ctrl-C, then checks that nothing is left running or
listening on the demo's ports. Every wait is bounded and says what it waited for.

    .venv/bin/python scripts/demo_smoke.py        (run from the repository root)
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PORTS = {"page and HTTP": 3000, "MQTT": 1883, "admin": 9090, "gRPC": 50051}
START_S = 300.0  # the first `make demo` on a fresh machine installs the venv first
LIVE_S = 90.0
STOP_S = 30.0
CHROMIUM = "/usr/bin/chromium"


def say(text: str) -> None:
    print(f"demo-smoke: {text}", flush=True)


def fail(text: str, log: Path) -> None:
    tail = log.read_text(errors="replace").splitlines()[-40:]
    print(
        "\n".join(["demo-smoke: FAILED: " + text, "--- last lines of the demo's output ---", *tail])
    )
    raise SystemExit(1)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def first_score(base: str) -> str:
    """The first score event of the public live scores stream."""
    async with httpx.AsyncClient(base_url=base, timeout=LIVE_S) as client:
        async with client.stream(
            "GET", "/scores", headers={"Accept": "text/event-stream"}
        ) as response:
            if response.status_code != 200:
                raise AssertionError(f"/scores answered {response.status_code}")
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "score":
                    return line.split(":", 1)[1].strip()
    raise AssertionError("/scores ended without a score")


REGIONAL_YOU = "document.querySelector('#regional-you')?.dataset.status === '200'"
REGIONAL_VISITOR = "document.querySelector('#regional-visitor')?.dataset.status === '451'"


async def check_page(base: str) -> None:
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "response",
                lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            await page.goto(base + "/")
            for what, expression in (
                ("the live connection", "window.demo && window.demo.connection === 'live'"),
                ("two matches drawn", "document.querySelectorAll('.match').length >= 2"),
                ("odds moving", "window.demo.oddsChanges >= 1"),
                # The GB-only market: offered to the demo's user, refused (451) to its French
                # visitor. That one 451 is the page showing a refusal on purpose.
                ("the GB-only market offered", REGIONAL_YOU),
                ("the GB-only market refused to a visitor", REGIONAL_VISITOR),
            ):
                try:
                    await page.wait_for_function(expression, timeout=LIVE_S * 1000)
                except Exception as exc:
                    raise AssertionError(f"the page never showed {what}") from exc
                say(f"page shows {what}")
        finally:
            await browser.close()
    expected = f"451 {base}/in-play/gb"
    if expected in errors:
        errors.remove(expected)
    if errors:
        raise AssertionError(f"the page reported errors: {errors}")


def main() -> int:
    busy = [f"{name} ({port})" for name, port in PORTS.items() if listening(port)]
    if busy:
        say(f"ports already in use, cannot run the demo: {', '.join(busy)}")
        return 1
    log = Path(tempfile.mkdtemp(prefix="demo-smoke-")) / "demo.log"
    say(f"starting `make demo` (output in {log})")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("KAFKA_BOOTSTRAP", None)
    proc = subprocess.Popen(
        ["make", "demo"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: Ctrl-C reaches everything it started
    )
    pgid = proc.pid
    base = f"http://127.0.0.1:{PORTS['page and HTTP']}"
    try:
        deadline = time.monotonic() + START_S
        while b"Open the page" not in log.read_bytes():
            if proc.poll() is not None:
                fail(f"`make demo` exited with {proc.returncode} before the page was up", log)
            if time.monotonic() > deadline:
                fail(f"the page was not announced within {START_S:.0f} s", log)
            time.sleep(0.5)
        say("the demo announced its page")
        page = httpx.get(base + "/", timeout=10)
        if page.status_code != 200 or "text/html" not in page.headers.get("content-type", ""):
            fail(f"GET / answered {page.status_code} {page.headers.get('content-type')}", log)
        score = asyncio.run(asyncio.wait_for(first_score(base), LIVE_S))
        say(f"a live score over SSE: {score}")
        asyncio.run(check_page(base))
    except AssertionError as exc:
        fail(str(exc), log)
    finally:
        if proc.poll() is None:
            say("stopping it with SIGINT (Ctrl-C)")
            os.killpg(pgid, signal.SIGINT)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            fail(f"`make demo` did not stop within {STOP_S:.0f} s of SIGINT", log)
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
        fail("processes of the demo were still running after it stopped", log)
    still = [f"{name} ({port})" for name, port in PORTS.items() if listening(port)]
    if still:
        fail(f"still listening after the demo stopped: {', '.join(still)}", log)
    say(f"stopped cleanly (exit {proc.returncode}); nothing left running or listening")
    return 0


if __name__ == "__main__":
    sys.exit(main())
