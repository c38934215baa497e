"""Brokers that can fail on purpose: a Kafka connection cut (a TCP proxy the broker advertises)
and a broker crash that keeps its data (Tansu on ``s3://`` storage served by moto on loopback).

The broker advertises the proxy's address, so every connection a Kafka client opens (bootstrap
and the broker connections named in Metadata) goes through the proxy; cutting the proxy is a
broker outage as the bridge sees it, and restarting Tansu behind it changes nothing for clients.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from harness import REPO, config_text
from sse_support import KillingProxy

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

    def __init__(self, persistent: bool = False) -> None:
        self.proxy_port = pick_free_port()
        self.proxy = OutageProxy()
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
        self, routes_toml: str, frontends: list[str], mqtt_options: str = ""
    ) -> Bridge:
        """An in-process bridge whose Kafka traffic all crosses the proxy; ``mqtt_options``:
        extra ``[listeners.mqtt]`` lines."""
        text = config_text(routes_toml).replace(
            "fetch_max_wait_ms = 10", f"fetch_max_wait_ms = {self.fetch_wait_ms}"
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
