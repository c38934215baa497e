"""Mixed client load for fault tests and fault benches: what every client was told, and what it
received, to be compared with what Kafka holds.

Every publish attempt carries a unique JSON value ``{"src", "n", "try"}``, so an acknowledgement
names exactly one value, and a value in Kafka names exactly one attempt. Publishers behave as
careful real clients: they retry a value until it is acknowledged (a new attempt after an HTTP
503 or transport error, after a negative or missing MQTT PUBACK). Readers behave as resuming
clients: an SSE reader reconnects with ``Last-Event-ID`` (to the next URL, so a reconnect can land
on another instance), an MQTT subscriber keeps a persistent session and reconnects.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaConsumer, TopicPartition
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sse_support import Event, EventParser

MQTT_ACK_WAIT_S = 3.0


@dataclass
class Ledger:
    """What the clients of one kind were told by the bridge."""

    acked: list[bytes] = field(default_factory=list)  # values acknowledged, in ack order
    attempts: int = 0
    refusals: Counter[str] = field(default_factory=Counter)  # "503", "transport", "0x80"...
    retry_after: set[str] = field(default_factory=set)  # Retry-After values seen on 503s
    ack_times: list[float] = field(default_factory=list)  # monotonic time of every ack

    def first_ack_after(self, moment: float) -> float | None:
        return next((t for t in self.ack_times if t >= moment), None)


def value(src: str, n: int, attempt: int) -> bytes:
    return json.dumps({"src": src, "n": n, "try": attempt}, separators=(",", ":")).encode()


class HttpPublisher:
    """POSTs numbered values to ``url`` until stopped; retries each until a 2xx."""

    def __init__(self, urls: list[str], src: str, pause_s: float = 0.02) -> None:
        self.urls, self.src, self.pause_s = urls, src, pause_s
        self.ledger = Ledger()
        self.next_n = 0

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        async with httpx.AsyncClient(timeout=httpx.Timeout(10)) as client:
            while not stop.is_set():
                body = value(self.src, self.next_n, attempt)
                url = self.urls[(self.next_n + attempt) % len(self.urls)]
                self.ledger.attempts += 1
                try:
                    response = await client.post(
                        url, content=body, headers={"content-type": "application/json"}
                    )
                except httpx.TransportError:
                    self.ledger.refusals["transport"] += 1
                    attempt += 1
                    await asyncio.sleep(0.1)
                    continue
                if 200 <= response.status_code < 300:
                    self.ledger.acked.append(body)
                    self.ledger.ack_times.append(time.monotonic())
                    self.next_n, attempt = self.next_n + 1, 0
                    await asyncio.sleep(self.pause_s)
                    continue
                self.ledger.refusals[str(response.status_code)] += 1
                if response.status_code == 503:
                    self.ledger.retry_after.add(response.headers.get("retry-after", ""))
                attempt += 1
                await asyncio.sleep(0.2)  # shorter than Retry-After: we measure recovery


class MqttPublisher:
    """A paho MQTT 5 client publishing QoS 1 values one at a time (own thread)."""

    def __init__(self, ports: list[int], topic: str, src: str, pause_s: float = 0.02) -> None:
        self.ports, self.topic, self.src, self.pause_s = ports, topic, src, pause_s
        self.ledger = Ledger()
        self.next_n = 0
        self._acks: dict[int, int] = {}
        self._cond = threading.Condition()
        self.client = _paho(f"pub-{src}-{uuid.uuid4().hex[:8]}", 0, ports)
        self.client.on_publish = self._on_publish

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        with self._cond:
            self._acks[mid] = int(reason.value)
            self._cond.notify_all()

    async def run(self, stop: asyncio.Event) -> None:
        flag = threading.Event()
        waiter = asyncio.create_task(_bridge_event(stop, flag))
        try:
            await asyncio.to_thread(self._run, flag)
        finally:
            waiter.cancel()

    def _run(self, stop: threading.Event) -> None:
        _connect(self.client, self.ports[0])
        attempt = 0
        pending: dict[int, bytes] = {}  # mid -> value, acknowledged possibly late
        try:
            while not stop.is_set():
                body = value(self.src, self.next_n, attempt)
                self.ledger.attempts += 1
                info = self.client.publish(self.topic, body, qos=1)
                pending[info.mid] = body
                code = self._wait(info.mid, stop)
                self._collect(pending)
                if code == 0:
                    self.next_n, attempt = self.next_n + 1, 0
                    stop.wait(self.pause_s)
                else:
                    self.ledger.refusals["no puback" if code is None else f"0x{code:02X}"] += 1
                    attempt += 1
                    stop.wait(0.2)
            stop.wait(1.0)  # late PUBACKs of the last attempts
            self._collect(pending)
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def _wait(self, mid: int, stop: threading.Event) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: mid in self._acks or stop.is_set(), MQTT_ACK_WAIT_S)
            return self._acks.get(mid)

    def _collect(self, pending: dict[int, bytes]) -> None:
        with self._cond:
            for mid in [m for m in pending if m in self._acks]:
                body = pending.pop(mid)
                if self._acks.pop(mid) == 0:
                    self.ledger.acked.append(body)
                    self.ledger.ack_times.append(time.monotonic())


class MqttSubscriber:
    """A persistent MQTT 5 session subscribed at QoS 1; paho reconnects it by itself."""

    def __init__(self, ports: list[int], topic_filter: str, client_id: str) -> None:
        self.ports, self.topic_filter = ports, topic_filter
        self.received: list[bytes] = []
        self.connects = 0
        self.client = _paho(client_id, 600, ports)
        self.client.on_message = lambda c, u, m: self.received.append(m.payload)
        self.client.on_connect = self._on_connect
        self.subscribed = threading.Event()

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connects += 1
        if int(reason.value) == 0 and not flags.session_present:
            c.subscribe(self.topic_filter, qos=1)
        if int(reason.value) == 0:
            self.subscribed.set()

    async def start(self) -> MqttSubscriber:
        await asyncio.to_thread(_connect, self.client, self.ports[0])
        await asyncio.to_thread(self.subscribed.wait, 15)
        await asyncio.sleep(0.3)  # the SUBACK; then the subscription is live
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class SseReader:
    """An EventSource-like reader that also retries after a 503 (as polyfills and apps do)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.parser = EventParser()
        self.events: list[Event] = []
        self.connects = 0
        self.refusals: Counter[str] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client:
            while not stop.is_set():
                url = self.urls[attempt % len(self.urls)]
                attempt += 1
                headers = {"Accept": "text/event-stream"}
                if self.parser.last_id:
                    headers["Last-Event-ID"] = self.parser.last_id
                try:
                    await self._read(client, url, headers, stop)
                except httpx.TransportError:
                    self.refusals["transport"] += 1
                self.parser.connection_lost()
                await asyncio.sleep(0.1)

    async def _read(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str], stop: asyncio.Event
    ) -> None:
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                self.refusals[str(response.status_code)] += 1
                return
            self.connects += 1
            chunks = response.aiter_raw().__aiter__()
            while not stop.is_set():
                reading = asyncio.ensure_future(chunks.__anext__())
                stopping = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({reading, stopping}, return_when="FIRST_COMPLETED")
                stopping.cancel()
                if reading not in done:
                    reading.cancel()
                    return
                try:
                    chunk = reading.result()
                except StopAsyncIteration:
                    return
                self.events.extend(self.parser.feed(chunk))

    def values(self) -> list[bytes]:
        return [e.data.encode() for e in self.events]


# -- Kafka truth and the checks --------------------------------------------------------------


async def kafka_records(
    bootstrap: str, topic: str, partitions: int, timeout: float = 30
) -> dict[int, list[bytes]]:
    """Every value in ``topic`` per partition, read up to the high-water mark of a fetch (the
    only end Tansu reports correctly)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
        deadline = time.monotonic() + timeout
        while True:
            batches = await consumer.getmany(timeout_ms=300)
            for tp, records in batches.items():
                out[tp.partition] += [r.value for r in records]
            ends = [consumer.highwater(tp) for tp in tps]
            positions = [await consumer.position(tp) for tp in tps]
            if all(end is not None and at >= end for at, end in zip(positions, ends, strict=True)):
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}: read {[len(v) for v in out.values()]} of {ends}")
    finally:
        await consumer.stop()


def lost_acks(ledger: Ledger, stored: dict[int, list[bytes]]) -> list[bytes]:
    """Acknowledged values that Kafka does not hold."""
    held = {v for values in stored.values() for v in values}
    return [v for v in ledger.acked if v not in held]


def delivery_errors(received: list[bytes], stored: dict[int, list[bytes]], exact: bool) -> str:
    """How ``received`` differs from Kafka, per partition ('' if it matches).

    ``exact``: the same sequence (SSE: no gap, no duplicate). Otherwise at-least-once (MQTT QoS
    1): every record, in order, duplicates allowed only as a repeat of an earlier suffix.
    """
    partition_of = {v: p for p, values in stored.items() for v in values}
    strays = [v for v in received if v not in partition_of]
    if strays:
        return f"{len(strays)} values not in Kafka, e.g. {strays[:2]}"
    problems = []
    for p, values in stored.items():
        got = [v for v in received if partition_of[v] == p]
        if exact and got != values:
            problems.append(_diff(p, got, values))
        elif not exact and _dedupe_in_order(got) != _dedupe_in_order(values):
            # QoS 1 is at least once: a publish re-sent after a lost PUBACK is in Kafka twice
            problems.append(_diff(p, _dedupe_in_order(got), _dedupe_in_order(values)))
    return "; ".join(problems)


def _dedupe_in_order(values: list[bytes]) -> list[bytes]:
    seen: set[bytes] = set()
    return [v for v in values if not (v in seen or seen.add(v))]  # type: ignore[func-returns-value]


def _diff(partition: int, got: list[bytes], want: list[bytes]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    at = min(len(got), len(want)) if at is None else at
    return (
        f"partition {partition}: {len(got)} received vs {len(want)} in Kafka, first difference "
        f"at {at}: got {got[at : at + 1]} want {want[at : at + 1]}"
    )


async def until_caught_up(
    readers: list[Any], stored_total: int, timeout: float, exact: bool = True
) -> None:
    """Wait until every reader has at least ``stored_total`` distinct values."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [len(set(_received(r))) for r in readers]
        if min(counts) >= stored_total:
            return
        await asyncio.sleep(0.1)


def _received(reader: Any) -> list[bytes]:
    return reader.values() if isinstance(reader, SseReader) else reader.received


# -- paho plumbing ---------------------------------------------------------------------------


def _paho(client_id: str, session_expiry: int, ports: list[int]) -> mqtt.Client:
    """A paho client that reconnects by itself, to the next of ``ports`` each time (a client
    of a dead instance moves to a live one, as behind a load balancer)."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
    client._fault_session_expiry = session_expiry  # type: ignore[attr-defined]

    def next_port(c: mqtt.Client, u: Any, flags: Any, reason: Any, props: Any) -> None:
        # The public ``port`` setter refuses while paho still counts the socket as open (it
        # does inside this callback); the reconnect reads ``_port``.
        at = ports.index(c._port) if c._port in ports else -1
        c._port = ports[(at + 1) % len(ports)]

    client.on_disconnect = next_port
    return client


def _connect(client: mqtt.Client, port: int) -> None:
    properties = Properties(PacketTypes.CONNECT)
    expiry = client._fault_session_expiry  # type: ignore[attr-defined]
    properties.SessionExpiryInterval = expiry
    client.connect("127.0.0.1", port, keepalive=30, clean_start=expiry == 0, properties=properties)
    client.loop_start()


async def _bridge_event(stop: asyncio.Event, flag: threading.Event) -> None:
    await stop.wait()
    flag.set()


# -- one mixed load: publishers and readers of one topic over every protocol -------------------


def mixed_routes(s: str, topic: str) -> str:
    """Publishing over MQTT and HTTP (keyed by source), reading the whole topic over SSE."""
    return f"""
[kafka.topics.{topic}]
partitions = 3

[[routes]]
name = "publish"
topic = "{topic}"
key = "{{src}}"
[routes.mqtt]
topic = "f{s}/src/{{src}}"
[routes.http]
method = "POST"
path = "/f{s}/src/{{src}}"

[[routes]]
name = "watch"
topic = "{topic}"
key = "{{src}}"
[routes.sse]
path = "/f{s}/all"
"""


@dataclass
class Instance:
    """Where one bridge instance listens."""

    http_port: int
    mqtt_port: int


@dataclass
class MixedLoad:
    """HTTP and MQTT publishers plus SSE readers and persistent MQTT subscribers of one topic,
    spread over ``instances`` (clients of a dead instance move to the next)."""

    s: str
    topic: str
    instances: list[Instance]
    http_publishers: int = 2
    mqtt_publishers: int = 2
    sse_readers: int = 3
    mqtt_subscribers: int = 2
    pause_s: float = 0.02
    http: list[HttpPublisher] = field(default_factory=list)
    mqtt: list[MqttPublisher] = field(default_factory=list)
    sse: list[SseReader] = field(default_factory=list)
    subs: list[MqttSubscriber] = field(default_factory=list)
    _stop_publishing: asyncio.Event = field(default_factory=asyncio.Event)
    _stop_reading: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    def _urls(self, path: str, first: int) -> list[str]:
        n = len(self.instances)
        order = [self.instances[(first + i) % n] for i in range(n)]
        return [f"http://127.0.0.1:{i.http_port}{path}" for i in order]

    def _mqtt_ports(self, first: int) -> list[int]:
        n = len(self.instances)
        return [self.instances[(first + i) % n].mqtt_port for i in range(n)]

    async def start(self) -> MixedLoad:
        s = self.s
        for i in range(self.sse_readers):
            reader = SseReader(self._urls(f"/f{s}/all", i))
            self.sse.append(reader)
            self._readers.append(asyncio.create_task(reader.run(self._stop_reading)))
        for i in range(self.mqtt_subscribers):
            sub = MqttSubscriber(self._mqtt_ports(i), f"f{s}/src/+", f"sub-{s}-{i}")
            self.subs.append(await sub.start())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the readers' streams are open: no gap at start
            if all(r.connects for r in self.sse):
                break
            await asyncio.sleep(0.05)
        for i in range(self.http_publishers):
            pub = HttpPublisher(self._urls(f"/f{s}/src/h{i}", i), f"h{i}", self.pause_s)
            self.http.append(pub)
            self._tasks.append(asyncio.create_task(pub.run(self._stop_publishing)))
        for i in range(self.mqtt_publishers):
            mqtt_pub = MqttPublisher(self._mqtt_ports(i), f"f{s}/src/m{i}", f"m{i}", self.pause_s)
            self.mqtt.append(mqtt_pub)
            self._tasks.append(asyncio.create_task(mqtt_pub.run(self._stop_publishing)))
        return self

    def acked(self) -> int:
        return sum(len(p.ledger.acked) for p in [*self.http, *self.mqtt])

    async def wait_acked(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.acked() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.acked()} of {count} publishes acknowledged")
            await asyncio.sleep(0.05)

    async def recovery_s(self, since: float, timeout: float = 60) -> float:
        """Seconds from ``since`` until every publisher had an acknowledgement again."""
        deadline = time.monotonic() + timeout
        ledgers = [p.ledger for p in [*self.http, *self.mqtt]]
        while any(ledger.first_ack_after(since) is None for ledger in ledgers):
            if time.monotonic() > deadline:
                stuck = [
                    p.src
                    for p in [*self.http, *self.mqtt]
                    if p.ledger.first_ack_after(since) is None
                ]
                raise AssertionError(f"publishers {stuck} never recovered in {timeout} s")
            await asyncio.sleep(0.05)
        return max(ledger.first_ack_after(since) for ledger in ledgers) - since  # type: ignore[type-var, operator]

    async def stop_publishing(self) -> None:
        self._stop_publishing.set()
        await asyncio.gather(*self._tasks)

    async def finish(self, bootstrap: str, timeout: float = 30) -> dict[int, list[bytes]]:
        """Stop publishing, let readers catch up with Kafka, stop them; Kafka's content."""
        await self.stop_publishing()
        stored = await kafka_records(bootstrap, self.topic, 3)
        total = len({v for values in stored.values() for v in values})
        await until_caught_up([*self.sse, *self.subs], total, timeout)
        self._stop_reading.set()
        await asyncio.gather(*self._readers)
        for sub in self.subs:
            await asyncio.to_thread(sub.stop)
        return stored

    def problems(self, stored: dict[int, list[bytes]]) -> list[str]:
        """Every broken promise: an acknowledged value missing, a reader off Kafka's sequence."""
        out = []
        for pub in [*self.http, *self.mqtt]:
            lost = lost_acks(pub.ledger, stored)
            if lost:
                out.append(f"{pub.src}: {len(lost)} acknowledged values lost, e.g. {lost[:2]}")
        for i, reader in enumerate(self.sse):
            error = delivery_errors(reader.values(), stored, exact=True)
            if error:
                out.append(f"sse reader {i}: {error}")
        for i, sub in enumerate(self.subs):
            error = delivery_errors(sub.received, stored, exact=False)
            if error:
                out.append(f"mqtt subscriber {i}: {error}")
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "acked": self.acked(),
            "http_refusals": sum((p.ledger.refusals for p in self.http), Counter()),
            "mqtt_refusals": sum((p.ledger.refusals for p in self.mqtt), Counter()),
            "retry_after": set().union(*(p.ledger.retry_after for p in self.http)),
            "sse_connects": [r.connects for r in self.sse],
            "sse_refusals": sum((r.refusals for r in self.sse), Counter()),
            "mqtt_sub_connects": [s.connects for s in self.subs],
        }
