"""Brokers that can fail on purpose: a Kafka connection cut (a TCP proxy the broker advertises)
and a broker crash that keeps its data (Tansu on ``s3://`` storage served by moto on loopback).

The broker advertises the proxy's address, so every connection a Kafka client opens (bootstrap
and the broker connections named in Metadata) goes through the proxy; cutting the proxy is a
broker outage as the bridge sees it, and restarting Tansu behind it changes nothing for clients.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from aiokafka.protocol.offset import (
    OffsetRequest_v1,
    OffsetRequest_v2,
    OffsetRequest_v3,
    OffsetResponse_v1,
    OffsetResponse_v2,
    OffsetResponse_v3,
)
from harness import REPO, config_text
from sse_support import KillingProxy, pipe

from bridge.kafka.embedded_broker import EmbeddedBroker, pick_free_port
from bridge.model.config import parse_config
from bridge.process.runtime import Bridge


class OutageProxy(KillingProxy):
    """A TCP proxy that can be cut: every connection reset and new ones refused until restored."""

    def __init__(self, upstream_port: int = 0) -> None:
        super().__init__(upstream_port)
        self.down = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start_on(self, port: int) -> OutageProxy:
        """Listen on a fixed ``port`` (the address the broker advertises)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = port
        return self

    def cut(self) -> int:
        """Reset every connection and refuse new ones; returns how many were cut."""
        self.down = True
        return self.kill_all()

    def restore(self) -> None:
        self.down = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        await super()._serve(reader, writer)


class StallingProxy(OutageProxy):
    """An :class:`OutageProxy` that can *stall*: connections stay open, but what the bridge sends
    is read and dropped, so every request goes unanswered (a broker that hangs, or a network
    that black-holes), rather than failing fast as a cut does."""

    def __init__(self, upstream_port: int = 0) -> None:
        super().__init__(upstream_port)
        self.stalled = False

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        await asyncio.gather(pipe(reader, up_writer, self._is_stalled), pipe(up_reader, writer))

    def _is_stalled(self) -> bool:
        return self.stalled


LIST_OFFSETS = 2
EARLIEST = -2
_LIST_OFFSETS = {
    1: (OffsetRequest_v1, OffsetResponse_v1),
    2: (OffsetRequest_v2, OffsetResponse_v2),
    3: (OffsetRequest_v3, OffsetResponse_v3),
}


class RetentionProxy(OutageProxy):
    """An :class:`OutageProxy` that reports a later log start for chosen partitions: what a
    broker answers after retention deleted records. Tansu has no retention and no DeleteRecords
    (docs/tansu-behaviour.md), so ListOffsets answers for the earliest offset are rewritten on
    the wire; everything else passes through untouched."""

    def __init__(self, upstream_port: int = 0) -> None:
        super().__init__(upstream_port)
        self.log_start: dict[tuple[str, int], int] = {}

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        asked: dict[int, int] = {}  # correlation id -> ListOffsets version asking for earliest
        await asyncio.gather(
            self._frames(reader, up_writer, lambda frame: self._request(frame, asked)),
            self._frames(up_reader, writer, lambda frame: self._response(frame, asked)),
        )

    @staticmethod
    async def _frames(reader, writer, rewrite) -> None:  # type: ignore[no-untyped-def]
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = rewrite(await reader.readexactly(size))
                writer.write(struct.pack(">i", len(frame)) + frame)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _request(self, frame: bytes, asked: dict[int, int]) -> bytes:
        api_key, version, correlation = struct.unpack(">hhi", frame[:8])
        if api_key == LIST_OFFSETS and version in _LIST_OFFSETS:
            client_id_len = struct.unpack(">h", frame[8:10])[0]
            body = frame[10 + max(client_id_len, 0) :]
            request = _LIST_OFFSETS[version][0].SCHEMA.decode(io.BytesIO(body))
            topics = request[-1]
            if any(ts == EARLIEST for _, parts in topics for _, ts in parts):
                asked[correlation] = version
        return frame

    def _response(self, frame: bytes, asked: dict[int, int]) -> bytes:
        correlation = struct.unpack(">i", frame[:4])[0]
        version = asked.pop(correlation, None)
        if version is None or not self.log_start:
            return frame
        response_type = _LIST_OFFSETS[version][1]
        response = response_type.decode(frame[4:])
        topics = [
            (
                topic,
                [
                    (part, error, ts, max(offset, self.log_start.get((topic, part), offset)))
                    for part, error, ts, offset in parts
                ],
            )
            for topic, parts in response.topics
        ]
        fields = (response.throttle_time_ms, topics) if version >= 2 else (topics,)
        return frame[:4] + response_type(*fields).encode()


class MotoS3:
    """``moto_server`` (an S3 emulator) on a free loopback port, with one bucket."""

    def __init__(self, bucket: str = "tansu") -> None:
        self.bucket = bucket
        self.port = pick_free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What Tansu needs to use this S3 (object_store's AWS_* variables)."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, timeout: float = 30) -> MotoS3:
        server = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **self.env()},
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                # moto accepts unsigned requests: create the bucket Tansu will write to.
                request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
                urllib.request.urlopen(request, timeout=2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class FaultyKafka:
    """Tansu behind an :class:`OutageProxy`; ``bootstrap`` is the proxy, ``direct`` the broker.

    ``persistent=True`` stores on moto S3, so :meth:`crash` (SIGKILL) and :meth:`restart` keep
    every record Tansu acknowledged; the memory broker forgets everything on a crash.
    """

    def __init__(self, persistent: bool = False, proxy: OutageProxy | None = None) -> None:
        self.proxy_port = pick_free_port()
        self.proxy = proxy or OutageProxy()
        self.s3 = MotoS3() if persistent else None
        cluster = f"faults-{uuid.uuid4().hex}"
        self.broker = EmbeddedBroker(
            storage_engine=f"s3://{self.s3.bucket}/" if self.s3 else "memory://tansu/",
            env=self.s3.env() if self.s3 else None,
            cluster_id=cluster,
            advertised=f"127.0.0.1:{self.proxy_port}",
        )

    @property
    def bootstrap(self) -> str:
        return self.proxy.address

    @property
    def fetch_wait_ms(self) -> int:
        """The ``fetch_max_wait_ms`` a consumer needs here. Tansu on s3 answers a fetch whose
        wait is shorter than its storage read with nothing, so a 10 ms wait never gets data."""
        return 500 if self.s3 is not None else 10

    async def start_bridge(
        self,
        routes_toml: str,
        frontends: list[str],
        mqtt_options: str = "",
        kafka_options: str = "",
    ) -> Bridge:
        """An in-process bridge whose Kafka traffic all crosses the proxy; ``mqtt_options``,
        ``kafka_options``: extra ``[listeners.mqtt]``, ``[kafka]`` lines."""
        text = config_text(routes_toml).replace(
            "fetch_max_wait_ms = 10", f"fetch_max_wait_ms = {self.fetch_wait_ms}\n{kafka_options}"
        )
        text = text.replace("[listeners.mqtt]\n", f"[listeners.mqtt]\n{mqtt_options}\n", 1)
        config = parse_config(
            text, REPO / "faults-routing.toml", {"KAFKA_BOOTSTRAP": self.bootstrap}
        )
        bridge = Bridge(config, frontends=frontends)
        await bridge.start()
        return bridge

    @property
    def direct(self) -> str:
        return self.broker.bootstrap

    async def start(self) -> FaultyKafka:
        if self.s3 is not None:
            await asyncio.to_thread(self.s3.start)
        await self.broker.start()
        self.proxy.upstream_port = self.broker.port
        await self.proxy.start_on(self.proxy_port)
        return self

    async def crash(self) -> None:
        """SIGKILL the broker (the proxy keeps listening and refuses until it is back)."""
        self.proxy.cut()
        await self.broker.stop(grace=0)

    async def restart(self) -> None:
        await self.broker.start()
        self.proxy.upstream_port = self.broker.port
        self.proxy.restore()

    async def stop(self) -> None:
        await self.proxy.stop()
        await self.broker.stop(grace=0)
        if self.s3 is not None:
            self.s3.stop()
