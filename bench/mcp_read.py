"""The MCP target of issue 17: a ``read_latest`` tool call's p50 beside the same read over an HTTP
fetch (``GET /odds/{match}``), against one bridge on the embedded broker, in the same run.

Both go through the same listener, guard (a bearer JWT each request) and table feed; the MCP
call adds JSON-RPC framing, the SDK's session and its Streamable HTTP transport (each call is a
POST answered with an SSE-framed result). Sequential calls over one kept-alive connection each,
so the figure is latency, not throughput. One figure per line; ratios to the HTTP baseline.

    .venv/bin/python bench/mcp_read.py [--calls 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import httpx2
from aiokafka import AIOKafkaProducer
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from bridge.edge.tokens import mint_token
from bridge.model.config import parse_config
from bridge.process.runtime import Bridge
from bridge.telemetry import log as bridge_log

CONFIG = """
[bridge]
name = "bench-mcp"
log_level = "warning"

[kafka]
fetch_max_wait_ms = 10

[kafka.topics.odds]
partitions = 3
compact = true

[listeners.http]
host = "127.0.0.1"
port = 0
mcp_rate_per_s = 1000000
mcp_burst = 1000000

[guard]
secret = "bench-mcp-secret-bench-mcp-secret-0123456"
algorithms = ["HS256"]

[[routes]]
name = "odds"
topic = "odds"
key = "{match}"
content_type = "application/json"

[routes.http]
method = "GET"
path = "/odds/{match}"

[routes.mqtt]
topic = "odds/{match}"

[routes.access]
subscribe = ["authenticated"]
"""


def catalogue_cost(calls: int = 2000) -> None:
    """What a tools/call spent building the caller's tool list before it was cached per kind of
    caller, beside the cached lookup, on the shipped routing.toml (10 routes): the list grows
    with the route table, the lookup does not."""
    from bridge.edge.access import Principal
    from protocols.mcp.catalogue import tools_for
    from protocols.mcp.operations import Operations, RateLimiter
    from protocols.mcp.server import McpService

    repo = Path(__file__).resolve().parents[1]
    config = parse_config(
        (repo / "routing.toml").read_text(), repo / "routing.toml", {"KAFKA_BOOTSTRAP": "x:1"}
    )
    routes = tuple(config.routes)
    caller = Principal("agent", frozenset({"bettor"}))
    started = time.perf_counter()
    for _ in range(calls):
        tools_for(config, routes, caller, "http")
    built = (time.perf_counter() - started) / calls * 1e6
    service = McpService(
        config, routes, Operations.__new__(Operations), RateLimiter(1, 1), None, listener="http"
    )  # type: ignore[arg-type]
    started = time.perf_counter()
    for _ in range(calls):
        service.tools(caller)
    cached = (time.perf_counter() - started) / calls * 1e6
    print(f"tool list per call, {len(routes)} routes: built {built:.1f} us, cached {cached:.1f} us")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(calls: int) -> None:
    bridge_log.configure("json", "warning")  # a log line per call would be part of the figure
    directory = Path(tempfile.mkdtemp())
    config = parse_config(CONFIG, directory / "routing.toml", {})
    bridge = Bridge(config, frontends=["http", "mcp"])
    await bridge.start()
    try:
        assert bridge.web is not None and bridge.embedded is not None
        producer = AIOKafkaProducer(bootstrap_servers=bridge.embedded.bootstrap)
        await producer.start()
        await producer.send_and_wait("odds", b'{"home": 1.8, "away": 2.1}', key=b"m1")
        await producer.stop()
        bearer = mint_token(config.guard_settings, "agent", ["analyst"])  # type: ignore[arg-type]
        headers = {"authorization": f"Bearer {bearer}"}
        base = f"http://127.0.0.1:{bridge.web.port}"

        http_ms: list[float] = []
        async with httpx.AsyncClient(base_url=base, headers=headers) as client:
            _, hub = bridge.kafka
            await (await hub.table("odds")).sync()  # the table feed has read the record
            for _ in range(calls // 10):  # warm-up
                await client.get("/odds/m1")
            for _ in range(calls):
                started = time.perf_counter()
                response = await client.get("/odds/m1")
                http_ms.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200

        mcp_ms: list[float] = []
        async with (
            httpx2.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(f"{base}/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            for _ in range(calls // 10):
                await session.call_tool("read_latest_odds", {"match": "m1"})
            for _ in range(calls):
                started = time.perf_counter()
                result = await session.call_tool("read_latest_odds", {"match": "m1"})
                mcp_ms.append((time.perf_counter() - started) * 1000)
                assert not result.is_error

        http_p50 = statistics.median(http_ms)
        mcp_p50 = statistics.median(mcp_ms)
        print(f"calls per client: {calls}")
        print(
            f"http fetch GET /odds/m1 p50: {http_p50:.2f} ms (p99 {percentile(http_ms, 0.99):.2f})"
        )
        print(
            f"mcp tools/call read_latest_odds p50: {mcp_p50:.2f} ms "
            f"(p99 {percentile(mcp_ms, 0.99):.2f})"
        )
        print(f"mcp p50 / http p50: {mcp_p50 / http_p50:.2f}x")
        catalogue_cost()
    finally:
        await bridge.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    asyncio.run(main(parser.parse_args().calls))
