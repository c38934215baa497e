"""The HTTP produce path without an HTTP server: what issue 14's "produce at Kafka's cost" costs.

Run: ``.venv/bin/python bench/produce_path.py [--concurrency 32] [--seconds 8]``

``bench/http_produce.py`` measures the whole bridge behind its HTTP server and a Python load
generator on the same two cores; the server (Hypercorn today, being replaced) dominates it. This
script measures the part the server hands requests to: a bridge started in this process (the
same routes as ``bench/http_produce.py``: a JSON-Schema-validated bet, ``Idempotency-Key``
required, acks=all; and the same route without a key), whose HTTP front-end's ASGI handler is
called directly with an ASGI scope, body and ``send`` per request -- everything from request
parsing on (validation, ledger ownership, claim, produce through the batch producer,
completion) runs, but no socket and no HTTP parser. Raw aiokafka ``send_and_wait`` is measured
in the same run, before and after, on the same broker and loop.

CPU is this process's (bridge + aiokafka), per request; the broker's is printed apart. Add the
server's own per-request CPU (``bench/http_stack.py``) to estimate the whole bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from http_produce import BET, SCHEMA, bridge_config, cpu_seconds, raw_baseline, run_workers, say

from bridge.kafka.embedded_broker import EmbeddedBroker, pick_free_port
from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec, parse_config
from bridge.process import event_loop
from bridge.process.runtime import Bridge
from bridge.telemetry import log as bridge_log

BODY = json.dumps(BET).encode()


async def call(handler: Any, path: str, key: str | None) -> int:
    """One request through the ASGI handler; the response status."""
    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(BODY)).encode()))
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # the client stays: nothing more arrives
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await handler(scope, receive, send)
    return status


async def measure(
    handler: Any, path: str, keyed: bool, concurrency: int, seconds: float, broker_pid: int
) -> dict[str, float]:
    statuses: dict[int, int] = {}

    async def one(_: int) -> None:
        status = await call(handler, path, uuid.uuid4().hex if keyed else None)
        statuses[status] = statuses.get(status, 0) + 1

    await one(0)  # warm: the route's plan, metadata
    own, broker = time.process_time(), cpu_seconds(broker_pid)
    rps, latencies = await run_workers(concurrency, seconds, one)
    n = max(1, len(latencies))
    if set(statuses) != {202}:
        raise SystemExit(f"unexpected statuses {statuses}")
    latencies.sort()
    return {
        "requests_per_s": float(rps),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "bridge_cpu_us_per_request": (time.process_time() - own) / n * 1e6,
        "broker_cpu_us_per_request": (cpu_seconds(broker_pid) - broker) / n * 1e6,
    }


async def main(concurrency: int, seconds: float) -> None:
    async with EmbeddedBroker() as broker:
        settings = KafkaSettings(bootstrap="external")
        raw_topic, http_topic, plain_topic = (
            f"{t}-{uuid.uuid4().hex[:6]}" for t in ("raw", "bets", "plain")
        )
        topics = [TopicSpec(raw_topic), TopicSpec(http_topic), TopicSpec(plain_topic)]
        await ensure_topics(settings, broker.bootstrap, topics)
        say("concurrency", str(concurrency))
        say("event_loop", "uvloop" if event_loop.loop_factory() else "asyncio")
        say("load_average_1min_at_start", os.getloadavg()[0])
        before, _ = await raw_baseline(broker.bootstrap, raw_topic, concurrency, seconds)
        with tempfile.TemporaryDirectory() as directory:
            schema = Path(directory) / "bet.json"
            schema.write_text(json.dumps(SCHEMA))
            text = bridge_config(pick_free_port(), http_topic, schema, plain_topic)
            # Quart takes the bridge's name as its import name: not this directory's "bench"
            text = text.replace('name = "bench"', 'name = "produce-path"')
            config = parse_config(
                text, Path(directory) / "routing.toml", {"KAFKA_BOOTSTRAP": broker.bootstrap}
            )
            bridge_log.configure(config.log_format, config.log_level)  # as `edgebridge run`
            bridge = Bridge(config, frontends=["http"])
            await bridge.start()
            try:
                handler = next(f for f in bridge.frontends if f.name == "http")
                keyed = await measure(handler, "/bets", True, concurrency, seconds, broker.pid)
                plain = await measure(handler, "/plain", False, concurrency, seconds, broker.pid)
            finally:
                await bridge.stop()
        after, _ = await raw_baseline(broker.bootstrap, raw_topic, concurrency, seconds)
        raw = (before + after) / 2
        say("raw_send_and_wait_requests_per_s_before", str(before))
        say("raw_send_and_wait_requests_per_s_after", str(after))
        for name, figures in (("idempotent", keyed), ("plain", plain)):
            for figure, value in figures.items():
                say(f"produce_path_{name}_{figure}", value)
            say(f"ratio_produce_path_{name}_to_raw", figures["requests_per_s"] / raw)
        say("load_average_1min_at_end", os.getloadavg()[0])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    event_loop.run(main(args.concurrency, args.seconds))
