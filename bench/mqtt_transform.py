"""MQTT ingest through a route with an inbound transform: ``bench/mqtt.py --transform``.

Issue 16's target: "MQTT ingest through a route with a typical inbound transform (rename two
fields, compute one, drop one) stays >= 0.6x raw aiokafka send(); print the transform's CPU per
record". In one run, on the embedded broker:

* raw aiokafka, one awaited ``send()`` per record (acks=1, the faster of aiokafka's default batch
  size and the bridge's), sending the *canonical* record's bytes: what an application that had
  already reshaped the record would pay;
* ``edgebridge run`` (MQTT only), QoS 0 publishes of the provider's record, counted once all are
  in Kafka, on two routes of the same bridge: ``shaped`` (source schema, the CEL transform, the
  canonical schema) and ``plain`` (the same payload, no schema, no transform);
* the bridge's CPU per publish on each (from /proc), and their difference: what the transform and
  its two schema checks cost per record in the bridge;
* the same work in this process without any I/O (``bridge.edge.transform.admit`` on the route as
  routing.toml loads it): the engine's own cost per record.

The provider's record and the transform are bench/transform_engines.py's (the engine choice).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mqtt import (
    BRIDGE_BATCH_BYTES,
    REPO,
    CpuMeter,
    RawClient,
    free_port,
    kafka_reader,
    raw_aiokafka,
    stop,
    wait_port,
)
from transform_engines import RECORD

from bridge.kafka.embedded_broker import EmbeddedBroker
from protocols.mqtt.wire.codec import encode
from protocols.mqtt.wire.packets import Publish

INBOUND = (
    '{"matchId": body.fixture, "home": body.home_odds, "away": body.away_odds,'
    ' "overround": 1.0 / body.home_odds + 1.0 / body.away_odds}'
)
SOURCE_SCHEMA = {
    "type": "object",
    "required": ["fixture", "home_odds", "away_odds"],
    "properties": {
        "fixture": {"type": "string"},
        "home_odds": {"type": "number", "minimum": 1},
        "away_odds": {"type": "number", "minimum": 1},
        "feed_seq": {"type": "integer"},
    },
}
CANONICAL_SCHEMA = {
    "type": "object",
    "required": ["matchId", "home", "away", "overround"],
    "properties": {
        "matchId": {"type": "string"},
        "home": {"type": "number"},
        "away": {"type": "number"},
        "overround": {"type": "number"},
    },
    "additionalProperties": False,
}


def routes(plain: str, shaped: str) -> str:
    return f"""
[kafka.topics.{plain}]
partitions = 1

[kafka.topics.{shaped}]
partitions = 1

[[routes]]
name = "plain"
topic = "{plain}"
key = "{{id}}"
audit = false

[routes.mqtt]
topic = "plain/{{id}}"

[[routes]]
name = "shaped"
topic = "{shaped}"
key = "{{id}}"
audit = false
content_type = "application/json"
schema = "canonical.json"

[routes.mqtt]
topic = "shaped/{{id}}"

[routes.transform]
version = "1"
source_schema = "source.json"
inbound = '{INBOUND}'
"""


def write_config(workdir: Path, port: int, plain: str, shaped: str) -> Path:
    (workdir / "source.json").write_text(json.dumps(SOURCE_SCHEMA))
    (workdir / "canonical.json").write_text(json.dumps(CANONICAL_SCHEMA))
    config = workdir / "bench-transform.toml"
    config.write_text(f"""
[bridge]
name = "bench-transform"
log_level = "warning"

[kafka]
fetch_max_wait_ms = 5

[listeners.mqtt]
host = "127.0.0.1"
port = {port}

[listeners.http]
enabled = false

[listeners.admin]
enabled = false
{routes(plain, shaped)}""")
    return config


async def until_in_kafka(reader: AIOKafkaConsumer, base: int, count: int) -> bytes:
    """Wait until the (one-partition) topic holds ``base + count`` records (a fetch at the last
    offset returns only then); the value of the first of them."""
    (partition,) = reader.assignment()
    reader.seek(partition, base + count - 1)
    await reader.getone()
    reader.seek(partition, base)
    return bytes((await reader.getone()).value)


async def ingest(
    port: int,
    bootstrap: str,
    mqtt_topic: str,
    kafka_topic: str,
    count: int,
    pid: int,
    base: int = 0,
) -> tuple[float, float, bytes]:
    """QoS 0 publishes of the provider's record until all are in Kafka (after the ``base``
    records earlier rounds wrote): msgs/s, the bridge's CPU µs per publish, and the value of the
    first record produced."""
    reader = await kafka_reader(bootstrap, kafka_topic)
    client = await RawClient.connect(port, f"tx-{os.getpid()}-{time.monotonic_ns()}")
    packet = encode(Publish(mqtt_topic, RECORD), 4)
    try:
        started, meter = time.perf_counter(), CpuMeter(pid)

        async def publish() -> None:
            left = count
            while left:
                burst = min(100, left)
                client.writer.write(packet * burst)
                left -= burst
                await client.writer.drain()

        _, first = await asyncio.gather(publish(), until_in_kafka(reader, base, count))
        return count / (time.perf_counter() - started), meter.us_per(count), first
    finally:
        client.close()
        await reader.stop()


def start_bridge(config: Path, bootstrap: str) -> subprocess.Popen[bytes]:
    """``edgebridge run`` (MQTT only, one process) on ``config``."""
    env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "EDGEBRIDGE_WORKERS": "1"}
    command = [sys.executable, "-m", "bridge.process.cli", "run", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--frontends", "mqtt"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def engine_us(config: Path, count: int) -> float:
    """``admit()`` of the provider's record on the shaped route, in this process."""
    from bridge.edge.transform import NOBODY, admit
    from bridge.model.config import load_config

    route = next(r for r in load_config(config).routes if r.name == "shaped")
    for _ in range(500):
        admit(route, RECORD, None, NOBODY)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(count):
            admit(route, RECORD, None, NOBODY)
        best = min(best, (time.process_time() - started) / count * 1e6)
    return best


async def run(messages: int, rounds: int = 2) -> None:
    def report(name: str, value: float, unit: str) -> None:
        print(f"{name}: {value:.{2 if value < 10 else 1}f} {unit}".rstrip(), flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="mqtt-transform-"))
    async with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        port = free_port()
        suffix = time.monotonic_ns()
        config = write_config(workdir, port, f"plain-{suffix}", f"shaped-{suffix}")
        canonical = json.dumps(
            {"matchId": "m1", "home": 2.5, "away": 1.6, "overround": 1 / 2.5 + 1 / 1.6},
            separators=(",", ":"),
        ).encode()
        proc = start_bridge(config, bootstrap)
        try:
            await wait_port(port)
            for round_ in range(1, rounds + 1):
                print(f"-- round {round_} of {rounds}", flush=True)
                raw = max(
                    [
                        await raw_aiokafka(
                            bootstrap, messages, b"m1", max_batch_size=b, value=canonical
                        )
                        for b in (16384, BRIDGE_BATCH_BYTES)
                    ]
                )
                report("raw aiokafka send() of the canonical record (acks=1)", raw[0], "msgs/s")
                report("  raw aiokafka CPU per record", raw[1], "us")
                base = (round_ - 1) * messages  # earlier rounds' records in the same topics
                plain = await ingest(
                    port, bootstrap, "plain/m1", f"plain-{suffix}", messages, proc.pid, base
                )
                shaped = await ingest(
                    port, bootstrap, "shaped/m1", f"shaped-{suffix}", messages, proc.pid, base
                )
                assert json.loads(shaped[2]) == json.loads(canonical), shaped[2]
                report("edgebridge ingest QoS 0, no transform", plain[0], "msgs/s")
                report("  ratio to raw aiokafka send()", plain[0] / raw[0], "x")
                report("  bridge CPU per publish", plain[1], "us")
                report(
                    "edgebridge ingest QoS 0, with the transform (target >= 0.6x)",
                    shaped[0],
                    "msgs/s",
                )
                report("  ratio to raw aiokafka send()", shaped[0] / raw[0], "x")
                report("  bridge CPU per publish", shaped[1], "us")
                report(
                    "  the transform's CPU per record in the bridge (with - without)",
                    shaped[1] - plain[1],
                    "us",
                )
            report(
                "admit() alone, in this process: source schema + CEL + encode + canonical schema",
                engine_us(config, 20_000),
                "us",
            )
        finally:
            stop(proc)
