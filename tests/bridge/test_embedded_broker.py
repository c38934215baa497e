"""EmbeddedBroker: starts a real Tansu, is really ours, and never outlives its parent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bridge.kafka.embedded_broker import EmbeddedBroker, EmbeddedBrokerError, pick_free_port

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc"),
    pytest.mark.broker,  # starts brokers of its own: not in `make test-fast`
]

REPO = Path(__file__).resolve().parents[2]


def process_gone(pid: int) -> bool:
    """True if *pid* no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in {"Z", "X"}


def wait_gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.02)
    return process_gone(pid)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port held by a plain listening socket (not Kafka)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_produce_consume_keyed_record_with_headers_then_stop_leaves_no_process() -> None:
    async with EmbeddedBroker() as broker:
        pid = broker.pid
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        assert broker.is_memory_only and broker.running

        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("greetings", 1, 1)])
            assert (await admin.describe_cluster())["cluster_id"] == broker.cluster_id
        finally:
            await admin.close()

        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            headers = [("content-type", b"text/plain"), ("bin", b"\x00\xff")]
            await producer.send_and_wait("greetings", b"hello", key=b"k1", headers=headers)
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=20
        )
        await consumer.start()
        try:
            tp = TopicPartition("greetings", 0)
            consumer.assign([tp])
            record = await consumer.getone()
        finally:
            await consumer.stop()
        assert (record.key, record.value, list(record.headers)) == (b"k1", b"hello", headers)

    assert not broker.running
    assert process_gone(pid)
    assert "tansu broker" in "\n".join(broker.output())


async def test_two_brokers_get_different_ports_and_cluster_ids() -> None:
    async with EmbeddedBroker() as first, EmbeddedBroker() as second:
        assert first.port != second.port
        assert first.cluster_id != second.cluster_id
        assert first.pid != second.pid


def test_blocking_api_for_sync_fixtures() -> None:
    with EmbeddedBroker() as broker:
        pid = broker.pid
        with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
            pass
    assert process_gone(pid)


async def test_retries_on_a_fresh_port_when_the_chosen_one_is_taken(busy_port: int) -> None:
    chosen: list[int] = []

    def chooser() -> int:
        chosen.append(busy_port if not chosen else pick_free_port())
        return chosen[-1]

    async with EmbeddedBroker(port_chooser=chooser) as broker:
        assert chosen[0] == busy_port
        assert broker.port == chosen[-1] != busy_port
        assert len(chosen) == 2


async def test_a_port_served_by_another_kafka_is_not_mistaken_for_ours() -> None:
    async with EmbeddedBroker() as other:
        ports = iter([other.port])
        async with EmbeddedBroker(port_chooser=lambda: next(ports, None) or pick_free_port()) as b:
            assert b.port != other.port
            assert other.running


async def test_gives_up_with_the_broker_output_in_the_error(busy_port: int) -> None:
    broker = EmbeddedBroker(port_chooser=lambda: busy_port, max_attempts=2)
    with pytest.raises(EmbeddedBrokerError) as caught:
        await broker.start()
    message = str(caught.value)
    assert "gave up after 2 attempts" in message
    assert "Address in use" in message  # Tansu's own panic text
    assert not broker.running


async def test_bad_storage_engine_reports_tansu_error() -> None:
    broker = EmbeddedBroker(storage_engine="bogus://nowhere/", max_attempts=1)
    with pytest.raises(EmbeddedBrokerError, match="UnsupportedStorageUrl"):
        await broker.start()


def test_a_fixed_cluster_id_is_kept_across_restarts() -> None:
    broker = EmbeddedBroker(cluster_id="edgebridge-test-fixed")
    for _ in range(2):
        with broker:
            assert broker.cluster_id == "edgebridge-test-fixed"


async def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(EmbeddedBrokerError, match="no Tansu broker binary"):
        await EmbeddedBroker().start()


async def test_stop_is_idempotent_and_restart_is_a_new_cluster() -> None:
    broker = EmbeddedBroker()
    await broker.stop()  # never started: no-op
    await broker.start()
    first_pid, first_cluster = broker.pid, broker.cluster_id
    await broker.stop()
    await broker.stop()
    await broker.start()
    try:
        assert broker.pid != first_pid and broker.running
        assert broker.cluster_id != first_cluster  # memory: a restart is a new, empty cluster
    finally:
        await broker.stop(grace=0)
    assert process_gone(first_pid) and process_gone(broker.pid)


# The child starts a broker, prints its pid and waits to be killed. "thread" starts it from a
# short-lived thread to show the death signal is not tied to the calling thread.
CHILD = textwrap.dedent(
    """
    import asyncio, sys, threading, time
    from bridge.kafka.embedded_broker import EmbeddedBroker

    broker = EmbeddedBroker()
    if sys.argv[1] == "asyncio":
        asyncio.run(broker.start())
    else:
        t = threading.Thread(target=broker.start_blocking)
        t.start()
        t.join()
        time.sleep(0.3)  # the starting thread is gone; the broker must still run
    print("BROKER_PID", broker.pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("mode", ["asyncio", "thread"])
def test_sigkill_of_the_parent_leaves_no_broker_behind(mode: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        stdout = parent.stdout
        assert stdout is not None
        found: list[int] = []

        def read_pid() -> None:
            for line in stdout:  # structlog also writes here
                if line.startswith("BROKER_PID "):
                    found.append(int(line.split()[1]))
                    return

        reader = threading.Thread(target=read_pid, daemon=True)
        reader.start()
        reader.join(30)
        assert found, "child did not report a broker pid"
        broker_pid = found[0]
        assert not process_gone(broker_pid), "broker died with its starting thread"

        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)

        assert wait_gone(broker_pid), f"broker {broker_pid} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
