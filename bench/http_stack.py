"""The HTTP/1.1 stack alone: the bridge's listener (our server, and Hypercorn) beside a bare
asyncio + httptools protocol, same run.

Run: ``.venv/bin/python bench/http_stack.py [--concurrency 32] [--seconds 8]`` (needs ``wrk`` and
PyPI ``httptools``).

How much of the bridge's CPU per HTTP produce is the HTTP stack itself, and what a lean HTTP/1.1
path would save? Both servers answer each POST as the produce path does (read the whole body,
answer ``202`` with a small JSON body and a ``correlation-id`` header) but without Kafka, each in
its own process on uvloop:

* ``edge``: the bridge's real listener (``bridge.web.listener.WebListener``, default options: our
  server in ``bridge/web/server.py``, the dispatch table) with a raw ASGI handler that answers
  through ``protocols.http.asgi``;
* ``direct``: the same listener with the same route answered by a direct handler
  (``bridge/web/direct.py``: the whole request in, one response out, no ASGI), as the HTTP
  front-end answers a produce whose body arrived with its head;
* ``hypercorn``: the same listener and handler with ``http2 = true`` (Hypercorn, h11);
* ``lean``: a bare ``asyncio.Protocol`` with httptools' C parser that writes each response with
  one ``transport.write`` (the floor: no ASGI, no checks).

wrk drives both with ``bench/http_produce.lua`` (a new Idempotency-Key per request). Prints
requests/s, p50/p99 and the server's CPU per request for each, one figure per line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.kafka.embedded_broker import pick_free_port  # noqa: E402
from bridge.process import event_loop  # noqa: E402

WRK_SCRIPT = Path(__file__).with_name("http_produce.lua")


def answer() -> tuple[int, list[tuple[str, str]], bytes]:
    """What both servers send: the shape of a produce acknowledgement."""
    correlation = secrets.token_hex(16)
    body = json.dumps(
        {"topic": "bets", "partition": 0, "offset": 1, "correlationId": correlation}
    ).encode()
    return 202, [("content-type", "application/json"), ("correlation-id", correlation)], body


# -- the two servers (each runs in its own process: ``--serve NAME PORT``) ---------------------


async def serve_listener(port: int, http2: bool, direct: bool = False) -> None:
    from bridge.model.config import ListenerSettings
    from bridge.web.direct import DirectRequest, Responder
    from bridge.web.listener import WebListener
    from protocols.http.asgi import Request, Response, send_response

    listener = WebListener(ListenerSettings("127.0.0.1", port, options={"http2": http2}))

    def produce_now(request: DirectRequest, responder: Responder) -> bool:
        Request.from_direct(request).read_body(1 << 20)
        responder.respond(*answer())
        return True

    async def produce(scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request.from_scope(scope, receive)
        await request.body(1 << 20)
        status, headers, body = answer()
        await send_response(send, Response(status, headers, body), [])

    listener.route("bench", "/bets", ("POST",), produce, direct=produce_now if direct else None)
    await listener.start()
    await asyncio.Event().wait()


class LeanProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive POSTs parsed by httptools; one write per response."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        status, headers, body = answer()
        head = [f"HTTP/1.1 {status} Accepted"]
        head += [f"{name}: {value}" for name, value in headers]
        head.append(f"content-length: {len(body)}")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve_lean(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(LeanProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# -- the measurement ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(name: str, concurrency: int, seconds: int) -> dict[str, float]:
    port = pick_free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", name, str(port), cwd=REPO
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        before = cpu_seconds(process.pid)
        wrk = await asyncio.create_subprocess_exec(
            "wrk",
            f"-t{min(concurrency, os.cpu_count() or 1)}",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "-s",
            str(WRK_SCRIPT),
            f"http://127.0.0.1:{port}/bets",
            stdout=subprocess.PIPE,
        )
        out = (await wrk.communicate())[0].decode()
        cpu = cpu_seconds(process.pid) - before
    finally:
        process.terminate()
        await process.wait()
    figures = dict(re.findall(r"^(latency_p\d+_us|Requests/sec|statuses):\s*(.+)$", out, re.M))
    count = sum(json.loads(figures["statuses"]).values())
    return {
        "requests_per_s": float(figures["Requests/sec"]),
        "p50_ms": int(figures["latency_p50_us"]) / 1000,
        "p99_ms": int(figures["latency_p99_us"]) / 1000,
        "server_cpu_us_per_request": cpu / max(1, count) * 1e6,
        "responses_202": float(json.loads(figures["statuses"]).get("202", 0)),
        "responses": float(count),
    }


async def main(concurrency: int, seconds: int, rounds: int) -> None:
    print(f"concurrency: {concurrency}", flush=True)
    print(f"load_average_1min_at_start: {os.getloadavg()[0]:.2f}", flush=True)
    for round_ in range(1, rounds + 1):
        results = {
            name: await measure(name, concurrency, seconds)
            for name in ("edge", "direct", "hypercorn", "lean")
        }
        for name, figures in results.items():
            for figure, value in figures.items():
                print(f"round{round_}_{name}_{figure}: {value:.2f}", flush=True)
        for name in ("edge", "direct", "lean"):
            ratio = results[name]["requests_per_s"] / results["hypercorn"]["requests_per_s"]
            cpu = (
                results["hypercorn"]["server_cpu_us_per_request"]
                / results[name]["server_cpu_us_per_request"]
            )
            print(f"round{round_}_{name}_to_hypercorn_requests: {ratio:.2f}", flush=True)
            print(f"round{round_}_hypercorn_to_{name}_cpu_per_request: {cpu:.2f}", flush=True)
    print(f"load_average_1min_at_end: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", nargs=2, metavar=("SERVER", "PORT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        server, port = arguments.serve
        if server == "lean":
            event_loop.run(serve_lean(int(port)))
        else:
            event_loop.run(
                serve_listener(int(port), http2=server == "hypercorn", direct=server == "direct")
            )
    else:
        event_loop.run(main(arguments.concurrency, arguments.seconds, arguments.rounds))
