"""Lean load-generator clients for the scale benches: raw asyncio protocols (no HTTP or MQTT
library: a Python load generator is otherwise the bottleneck long before the bridge is).

A generator process (:func:`generator_main`) holds thousands of SSE streams and MQTT sessions from
its own loopback source address (127.0.0.x, so the 4-tuples never run out of ephemeral ports) and
obeys commands from the driver over a pipe. Records carry ``{"n": <sequence>, "t": <send time>}``;
every client keeps the sequence numbers it received and their delivery latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

RECORD = re.compile(rb'\{"n":(\d+),"t":([0-9.]+)')
SSE_ID = re.compile(rb"(?:^|\n)id: ([^\n]*)\n")


@dataclass
class Received:
    """What one client got: sequence numbers in arrival order and their latencies (s)."""

    seqs: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def add(self, chunk: bytes) -> None:
        now = time.time()
        for n, t in RECORD.findall(chunk):
            self.seqs.append(int(n))
            self.latencies.append(now - float(t))


class SseClient(asyncio.Protocol):
    """One event stream; remembers the last event id to resume with."""

    def __init__(self, path: str, last_id: str | None = None) -> None:
        self.path, self.last_id = path, last_id
        self.got = Received()
        self.ok = False
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._tail = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
            f"{resume}\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        if not self.ok:
            self.ok = data.startswith(b"HTTP/1.1 200")
        data = self._tail + data
        cut = data.rfind(b"\n\n") + 2  # complete events only; keep the rest for next time
        events, self._tail = data[:cut], data[cut:]
        if events:
            self.got.add(events)
            ids = SSE_ID.findall(events)
            if ids:
                self.last_id = ids[-1].decode()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class MqttClient(asyncio.Protocol):
    """An MQTT 5 session subscribed at ``qos``; acknowledges QoS 1 deliveries."""

    def __init__(self, client_id: str, topic_filter: str, qos: int, expiry: int) -> None:
        self.client_id, self.topic_filter, self.qos, self.expiry = (
            client_id,
            topic_filter,
            qos,
            expiry,
        )
        self.got = Received()
        self.ok = False
        self.session_present = False
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        props = b"\x11" + struct.pack(">I", self.expiry) if self.expiry else b""
        flags = 0x00 if self.expiry else 0x02  # clean start only for throw-away sessions
        body = _utf8("MQTT") + bytes([5, flags]) + struct.pack(">H", 0)
        body += _varint(len(props)) + props + _utf8(self.client_id)
        transport.write(b"\x10" + _varint(len(body)) + body)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            packet = self._take()
            if packet is None:
                return
            kind, body = packet
            if kind == 0x20:  # CONNACK
                self.session_present = bool(body[0] & 1)
                if body[1] == 0 and not self.session_present:
                    sub = struct.pack(">H", 1) + b"\0" + _utf8(self.topic_filter)
                    sub += bytes([self.qos])
                    assert self.transport is not None
                    self.transport.write(b"\x82" + _varint(len(sub)) + sub)
                self.ok = body[1] == 0 and self.session_present
            elif kind == 0x90:  # SUBACK
                self.ok = True
            elif kind >> 4 == 3:  # PUBLISH
                self._publish(kind, body)

    def _publish(self, kind: int, body: bytes) -> None:
        qos = (kind >> 1) & 3
        (topic_len,) = struct.unpack_from(">H", body)
        at = 2 + topic_len
        if qos:
            packet_id = body[at : at + 2]
            at += 2
            assert self.transport is not None
            self.transport.write(b"\x40\x02" + packet_id)  # PUBACK
        self.got.add(body[at:])

    def _take(self) -> tuple[int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        length, shift, at = 0, 0, 1
        while True:
            if at >= len(buf):
                return None
            byte = buf[at]
            length |= (byte & 0x7F) << shift
            shift += 7
            at += 1
            if not byte & 0x80:
                break
        if len(buf) < at + length:
            return None
        kind, body = buf[0], bytes(buf[at : at + length])
        del buf[: at + length]
        return kind, body

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


# -- the generator process ---------------------------------------------------------------------


@dataclass
class Plan:
    """Which clients one generator holds."""

    index: int
    source_ip: str
    http_port: int
    mqtt_port: int
    sse_path: str
    mqtt_filter: str
    mqtt_qos: int = 0
    mqtt_expiry: int = 0  # > 0: persistent sessions (resumed after a disconnect)


class Generator:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.clients: list[SseClient | MqttClient] = []
        self.refused = 0

    async def _open(self, port: int, factory: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, client = await loop.create_connection(
                factory, "127.0.0.1", port, local_addr=(self.plan.source_ip, 0)
            )
            self.clients.append(client)
        except OSError:
            self.refused += 1

    async def add(self, sse: int, mqtt: int, rate: float) -> dict[str, Any]:
        """Open ``sse`` + ``mqtt`` more clients at about ``rate`` per second."""
        p = self.plan
        start = len(self.clients)
        factories: list[tuple[int, Any]] = [(p.http_port, lambda: SseClient(p.sse_path))] * sse
        for i in range(mqtt):
            client_id = f"b{p.index}-{start + sse + i}"
            factories.append(
                (
                    p.mqtt_port,
                    lambda c=client_id: MqttClient(c, p.mqtt_filter, p.mqtt_qos, p.mqtt_expiry),
                )
            )
        batch = max(1, int(rate / 20))
        for at in range(0, len(factories), batch):
            await asyncio.gather(*(self._open(port, f) for port, f in factories[at : at + batch]))
            await asyncio.sleep(0.05)
        return self.status()

    def status(self) -> dict[str, Any]:
        return {
            "clients": len(self.clients),
            "ok": sum(1 for c in self.clients if c.ok and not c.closed),
            "closed": sum(1 for c in self.clients if c.closed),
            "refused": self.refused,
            "rss": _rss(),
            "cpu": time.process_time(),
        }

    def collect(self, first_seq: int) -> dict[str, Any]:
        """Latencies of records with sequence >= ``first_seq``, and how many arrived."""
        latencies: list[float] = []
        counts: list[int] = []
        for c in self.clients:
            got = c.got
            picked = [lat for n, lat in zip(got.seqs, got.latencies, strict=True) if n >= first_seq]
            latencies += picked
            counts.append(len(picked))
        return {"latencies": latencies, "counts": counts, **self.status()}

    def behind(self, last_seq: int) -> int:
        """How many clients have not yet received record ``last_seq``."""
        return sum(1 for c in self.clients if last_seq not in c.got.seqs[-50:])

    def sequences(self) -> list[tuple[str, list[int]]]:
        return [(type(c).__name__, c.got.seqs) for c in self.clients]

    def drop_all(self) -> int:
        """Abort every connection (a stadium's network going away)."""
        for c in self.clients:
            if c.transport is not None:
                c.transport.abort()
        return len(self.clients)

    async def resume_all(self, rate: float) -> dict[str, Any]:
        """Reconnect every client at once: SSE with Last-Event-ID, MQTT with its session."""
        p = self.plan
        old, self.clients = self.clients, []
        factories: list[tuple[int, Any]] = []
        for c in old:
            if isinstance(c, SseClient):
                factories.append((p.http_port, lambda c=c: _resumed_sse(c)))
            else:
                factories.append((p.mqtt_port, lambda c=c: _resumed_mqtt(c)))
        batch = max(1, int(rate / 20))
        for at in range(0, len(factories), batch):
            await asyncio.gather(*(self._open(port, f) for port, f in factories[at : at + batch]))
            if rate < 1e9:
                await asyncio.sleep(0.05)
        return self.status()

    async def retry(self) -> int:
        """Reconnect every client the bridge closed (a 0x88 CONNACK, a dropped stream), as real
        clients do, keeping what it received; returns how many."""
        p = self.plan
        retried = 0
        for index, c in enumerate(self.clients):
            if not c.closed:
                continue
            if isinstance(c, SseClient):
                port, factory = p.http_port, lambda c=c: _resumed_sse(c)
            else:
                port, factory = p.mqtt_port, lambda c=c: _resumed_mqtt(c)
            before = len(self.clients)
            await self._open(port, factory)
            if len(self.clients) > before:
                self.clients[index] = self.clients.pop()
                retried += 1
        return retried


def _resumed_sse(old: SseClient) -> SseClient:
    new = SseClient(old.path, old.last_id)
    new.got = old.got
    return new


def _resumed_mqtt(old: MqttClient) -> MqttClient:
    new = MqttClient(old.client_id, old.topic_filter, old.qos, old.expiry)
    new.got = old.got
    return new


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def generator_main(plan: Plan, conn: Connection) -> None:
    """Entry point of a generator process: run commands from ``conn`` until "stop"."""
    raise_nofile()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_serve(Generator(plan), conn))


async def _serve(gen: Generator, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    while True:
        command, args = await loop.run_in_executor(None, conn.recv)
        if command == "stop":
            gen.drop_all()
            conn.send(None)
            return
        if command == "add":
            result: Any = await gen.add(*args)
        elif command == "status":
            result = gen.status()
        elif command == "collect":
            result = gen.collect(*args)
        elif command == "behind":
            result = gen.behind(*args)
        elif command == "sequences":
            result = gen.sequences()
        elif command == "drop":
            result = gen.drop_all()
        elif command == "resume":
            result = await gen.resume_all(*args)
        elif command == "retry":
            result = await gen.retry()
        else:
            result = ValueError(command)
        conn.send(result)


def raise_nofile() -> None:
    """Lift the soft open-file limit to the hard one (20,000 here)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def source_ip(index: int) -> str:
    return f"127.0.0.{10 + index}"


def reachable(ip: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((ip, 0))
            return True
        except OSError:
            return False


def record(n: int) -> bytes:
    return json.dumps({"n": n, "t": time.time()}, separators=(",", ":")).encode()
