"""Exact resume by last-message-id across a SIGKILL of the bridge process: the position lives in
the id the client holds, so a restarted instance (or any other) continues exactly."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import grpc
from aiokafka import AIOKafkaProducer
from grpc_support import BridgeClient, records
from harness import BridgeProcess, config_text, free_port

from protocols.grpc import edgebridge_pb2 as pb


def routes(topic: str, port: int) -> str:
    return f"""
[listeners.grpc]
idempotency_session_timeout_ms = 1000  # the ledger group joins in ~0.5 s (not ~3 s)
host = "127.0.0.1"
port = {port}

[kafka.topics.{topic}]
partitions = 3

[[routes]]
name = "odds"
topic = "{topic}"
key = "{{match}}"

[routes.grpc]
"""


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i, value in enumerate(values):
            # Match 1's records among others', spread over three partitions by key.
            await producer.send_and_wait(topic, b"noise", key=f"other-{i}".encode())
            await producer.send_and_wait(topic, value, key=b"1")
    finally:
        await producer.stop()


async def test_resume_is_exact_across_a_sigkill_and_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"gk-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = tmp_path / "routing.toml"
    config.write_text(config_text(routes(topic, port)))
    first = [f"before-{i}".encode() for i in range(20)]
    later = [f"after-{i}".encode() for i in range(20)]
    bridge = await BridgeProcess(config, kafka_bootstrap).astart(wait_port=port)
    restarted: BridgeProcess | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = BridgeClient(channel).subscribe("odds", {"match": "1"})
            assert (await call.read()).kind == pb.Event.MARKER
            await produce(kafka_bootstrap, topic, first)
            got = await records(call, 12)
            assert [e.value for e in got] == first[:12]
            bridge.stop(signal.SIGKILL)
        # Records written while no bridge runs, then a new process on the same port.
        await produce(kafka_bootstrap, topic, later)
        restarted = await BridgeProcess(config, kafka_bootstrap).astart(wait_port=port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            resumed = BridgeClient(channel).subscribe("odds", {"match": "1"}, last_id=got[-1].id)
            rest = await records(resumed, 28)
            assert [e.value for e in rest] == first[12:] + later
            assert all(e.key == b"1" for e in rest)
            resumed.cancel()
    finally:
        bridge.kill()
        if restarted is not None:
            restarted.stop()
