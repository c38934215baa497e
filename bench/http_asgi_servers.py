"""The whole bridge behind two HTTP servers in one run: Hypercorn (h11) and uvicorn (httptools).

Run: ``.venv/bin/python bench/http_asgi_servers.py [--concurrency 32] [--seconds 8]`` (needs
``wrk`` and PyPI ``uvicorn`` + ``httptools``).

What would a leaner HTTP/1.1 server give for the real produce path? One bridge process (HTTP
front-end, idempotency ledger, Kafka on an embedded broker) serves its ASGI app twice: on its
own listener (Hypercorn, as in production) and on a second port through uvicorn's httptools
protocol. wrk sends the same POSTs (a new Idempotency-Key each; then without a key) to each in
turn, twice, and the bridge's CPU per request is read from /proc for each window. Only HTTP/1.1
is compared: uvicorn has no HTTP/2, which the shared listener also serves.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from http_produce import SCHEMA, bridge_config, cpu_seconds, say, wait_for_port, wrk_run

from bridge.kafka.embedded_broker import EmbeddedBroker, pick_free_port
from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec
from bridge.process import event_loop


async def serve(config_path: str, lean_port: int) -> None:
    """In the bridge process: start the bridge, then serve its ASGI app on uvicorn as well."""
    import uvicorn

    from bridge.model.config import load_config
    from bridge.process.runtime import Bridge
    from bridge.telemetry import log as bridge_log

    bridge_log.configure("json", "warning")
    bridge = Bridge(load_config(Path(config_path)), frontends=["http"])
    await bridge.start()
    assert bridge.web is not None
    config = uvicorn.Config(
        bridge.web,
        host="127.0.0.1",
        port=lean_port,
        http="httptools",
        loop="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await bridge.stop()


async def main(concurrency: int, seconds: float) -> None:
    async with EmbeddedBroker() as broker:
        http_topic, plain_topic = (f"{t}-{uuid.uuid4().hex[:6]}" for t in ("bets", "plain"))
        topics = [TopicSpec(http_topic), TopicSpec(plain_topic)]
        await ensure_topics(KafkaSettings(bootstrap="external"), broker.bootstrap, topics)
        say("concurrency", str(concurrency))
        say("event_loop", "uvloop" if event_loop.loop_factory() else "asyncio")
        say("load_average_1min_at_start", os.getloadavg()[0])
        with tempfile.TemporaryDirectory() as directory:
            schema = Path(directory) / "bet.json"
            schema.write_text(json.dumps(SCHEMA))
            ports = {"hypercorn": pick_free_port(), "uvicorn": pick_free_port()}
            config = Path(directory) / "routing.toml"
            config.write_text(bridge_config(ports["hypercorn"], http_topic, schema, plain_topic))
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--serve",
                str(config),
                str(ports["uvicorn"]),
                env={**os.environ, "KAFKA_BOOTSTRAP": broker.bootstrap},
                stdout=subprocess.DEVNULL,
            )
            try:
                for port in ports.values():
                    await wait_for_port(port, process)
                for round_ in (1, 2):
                    for server, port in ports.items():
                        for path, keyed in (("/bets", True), ("/plain", False)):
                            before = cpu_seconds(process.pid)
                            rps, latencies, statuses = await wrk_run(
                                port, concurrency, seconds, path, keyed
                            )
                            cpu = (cpu_seconds(process.pid) - before) / max(
                                1, sum(statuses.values())
                            )
                            name = f"round{round_}_{server}_{'idempotent' if keyed else 'plain'}"
                            say(f"{name}_requests_per_s", str(rps))
                            say(f"{name}_p50_ms", latencies[0])
                            say(f"{name}_p99_ms", latencies[1])
                            say(f"{name}_bridge_cpu_ms_per_request", cpu * 1000)
                            say(f"{name}_statuses", json.dumps(statuses, sort_keys=True))
            finally:
                process.terminate()
                await process.wait()
        say("load_average_1min_at_end", os.getloadavg()[0])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:
        event_loop.run(serve(arguments.serve[0], int(arguments.serve[1])))
    else:
        event_loop.run(main(arguments.concurrency, arguments.seconds))
