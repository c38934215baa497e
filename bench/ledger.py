"""The idempotency ledger scaled out (issue 14, item 3): memory per held key, each instance's RSS
growth against one instance holding every key, and restart-to-ready time.

Run: ``.venv/bin/python bench/ledger.py [--keys 1000000]``. Prints one figure per line.

What it does, on the embedded broker (memory-only Tansu):

1. starts two bridges A and B (``edgebridge run``, one worker each, default ledger settings:
   12 partitions, 6 s session timeout) on an empty ledger; they split its partitions 6/6;
2. writes ``--keys`` idempotency keys into the ledger topic **in the exact format the bridge
   writes, through its own encoder** (a claim and a completion per key, the completion holding
   the ``202`` a produce answers): the owners read them as they would their own writes. Writing
   them through HTTP would take ~20 minutes here, and the owners' tables get the same records;
3. RSS growth of A and B against their RSS on the empty ledger, keys each holds
   (``edgebridge_owned_table_keys``);
4. B killed with SIGKILL and restarted: seconds from the process start to ``idempotency.ready``
   (its share loaded; the listener opens right after);
5. the baseline: A and B killed, one instance C alone holds every key: its RSS growth and its
   restart-to-ready time;
6. the table's own bytes per key, by tracemalloc, for the same records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import httpx
import psutil
from aiokafka import AIOKafkaProducer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.kafka.embedded_broker import EmbeddedBroker  # noqa: E402
from bridge.kafka.topic_admin import ensure_topics  # noqa: E402
from bridge.model.config import KafkaSettings, TopicSpec  # noqa: E402
from protocols.http.asgi import Response  # noqa: E402
from protocols.http.idempotency import (  # noqa: E402
    DEFAULT_PARTITIONS,
    DEFAULT_TOPIC,
    LedgerPartition,
    correlation_id,
    encode_claim,
    encode_complete,
    fingerprint,
    fingerprint_digest,
    scope_key,
)

TTL_MS = 24 * 3600 * 1000


def say(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def records(count: int, seed: str) -> list[tuple[bytes, bytes, bytes, int]]:
    """(key, claim, completion, timestamp) per key, as the bridge encodes them."""
    now = int(time.time() * 1000)
    out = []
    for i in range(count):
        key = scope_key("bet", f"user-{i % 50_000}", f"{seed}-{i:08d}-{uuid.uuid4().hex[:16]}")
        claim = os.urandom(16)
        body = json.dumps({"userId": f"user-{i % 50_000}", "matchId": "m1", "amount": 5}).encode()
        fp = fingerprint_digest(fingerprint("POST", "/bets", "application/json", body))
        correlation = correlation_id(key)
        acked = {"topic": "bets", "partition": i % 3, "offset": i, "correlationId": correlation}
        response = Response.json(202, json.dumps(acked).encode(), [("correlation-id", correlation)])
        out.append(
            (
                key,
                encode_claim(claim, fp, now + TTL_MS, "bets", {0: i, 1: i, 2: i}),
                encode_complete(claim, fp, now + TTL_MS, response),
                now,
            )
        )
    return out


async def prefill(bootstrap: str, keys: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
        enable_idempotence=False,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        chunk = 50_000
        for first in range(0, keys, chunk):
            futures = []
            for key, claim, complete, at in records(min(chunk, keys - first), f"k{first}"):
                futures.append(await producer.send(DEFAULT_TOPIC, claim, key, timestamp_ms=at))
                futures.append(await producer.send(DEFAULT_TOPIC, complete, key, timestamp_ms=at))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


class Instance:
    def __init__(self, name: str, workdir: Path, bootstrap: str, session_ms: int) -> None:
        self.name = name
        self.port, self.admin = free_port(), free_port()
        self.bootstrap = bootstrap
        self.config = workdir / f"{name}.toml"
        self.config.write_text(
            f"""
[bridge]
name = "bench"
[kafka]
fetch_max_wait_ms = 10
[listeners.mqtt]
enabled = false
[listeners.http]
host = "127.0.0.1"
port = {self.port}
idempotency_session_timeout_ms = {session_ms}
[listeners.admin]
host = "127.0.0.1"
port = {self.admin}
[[routes]]
name = "bet"
topic = "bets"
key = "{{$body.userId}}"
[routes.http]
method = "POST"
path = "/bets"
idempotency = "required"
"""
        )
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        env = {**os.environ, "KAFKA_BOOTSTRAP": self.bootstrap, "EDGEBRIDGE_WORKERS": "1"}
        command = [sys.executable, "-m", "bridge.process.cli", "run", "--config", str(self.config)]
        command += ["--log-format", "json", "--log-level", "info"]
        self.started_at = time.monotonic()
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{name}"' in line:
                try:
                    found.append(json.loads(line))
                except ValueError:
                    pass
        return found

    async def ready(self, timeout: float = 600) -> float:
        """Seconds from the process start until its share of the ledger was loaded and the
        listener open (``bridge.started`` follows ``idempotency.ready``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            if self.events("bridge.started"):
                return time.monotonic() - self.started_at
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready: {self.log.read_text()[-3000:]}")

    def loading_s(self) -> float:
        """From the first assignment to its last partition loaded (the rest of a start is the
        process start and the group join)."""
        assigned = self.events("owned.assigned")[0]["timestamp"]
        loaded = self.events("idempotency.ready")[-1]["timestamp"]
        return _seconds(str(loaded)) - _seconds(str(assigned))

    def worker(self) -> psutil.Process:
        assert self.proc is not None
        parent = psutil.Process(self.proc.pid)
        children = parent.children(recursive=True)
        return children[0] if children else parent

    def rss(self) -> int:
        return int(self.worker().memory_info().rss)

    async def gauge(self, name: str) -> float:
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"http://127.0.0.1:{self.admin}/metrics")).text
        found = re.search(rf'^{name}{{topic="{DEFAULT_TOPIC}"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0

    def kill(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        parent = psutil.Process(self.proc.pid)
        for proc in [*parent.children(recursive=True), parent]:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()


async def held(instances: list[Instance], total: int, timeout: float = 900) -> list[float]:
    """Until the instances' gauges add up to ``total`` keys (they refresh every 5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = [await i.gauge("edgebridge_owned_table_keys") for i in instances]
        if sum(keys) >= total:
            return keys
        await asyncio.sleep(1)
    raise TimeoutError(f"keys held: {keys}, wanted {total}")


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def table_bytes_per_key(count: int) -> float:
    """What the table keeps per key: the records are made inside the traced region (as a
    consumer makes them) and dropped, so only what the table holds on to is counted."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = LedgerPartition()
    for key, claim, complete, _ in records(count, "tm"):
        table.apply(key, claim)
        table.apply(key, complete)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used / len(table)


async def main(keys: int, session_ms: int) -> None:
    say("keys", keys)
    say("ledger session timeout, ms", session_ms)
    say("table bytes per key (tracemalloc, 100,000 keys)", round(table_bytes_per_key(100_000)))
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-ledger-{uuid.uuid4().hex[:8]}"
    workdir.mkdir()
    async with EmbeddedBroker() as broker:
        settings = KafkaSettings(bootstrap="external")
        await ensure_topics(
            settings,
            broker.bootstrap,
            [
                TopicSpec(DEFAULT_TOPIC, DEFAULT_PARTITIONS, 1, True),
                TopicSpec("bets", 3),
            ],
        )
        a = Instance("a", workdir, broker.bootstrap, session_ms)
        b = Instance("b", workdir, broker.bootstrap, session_ms)
        instances = [a, b]
        try:
            a.start()
            b.start()
            await a.ready()
            await b.ready()
            await asyncio.sleep(8)  # the second join's rebalance, then an idle moment
            base = {i.name: i.rss() for i in instances}
            say("idle RSS per instance, empty ledger (MiB)", {k: v >> 20 for k, v in base.items()})
            seconds = await prefill(broker.bootstrap, keys)
            say("ledger pre-filled (records, s)", (2 * keys, round(seconds, 1)))
            shares = await held(instances, keys)
            await asyncio.sleep(6)
            grown = {i.name: i.rss() - base[i.name] for i in instances}
            for instance, share in zip(instances, shares, strict=True):
                say(f"instance {instance.name}: keys held", int(share))
                say(f"instance {instance.name}: RSS growth (MiB)", grown[instance.name] >> 20)
                say(
                    f"instance {instance.name}: bytes per held key (RSS)",
                    round(grown[instance.name] / max(share, 1)),
                )
            b.kill()
            b.start()
            restart_b = await b.ready()
            share_b = (await held([a, b], keys))[1]
            say("restart of B (SIGKILL) to ready, s", round(restart_b, 2))
            say("restart of B: of which loading its share, s", round(b.loading_s(), 2))
            say("restart of B: keys it loaded", int(share_b))
            a.kill()
            b.kill()
            c = Instance("c", workdir, broker.bootstrap, session_ms)
            instances.append(c)
            c.start()
            restart_c = await c.ready()
            await held([c], keys)
            await asyncio.sleep(6)
            all_growth = c.rss() - sum(base.values()) // 2
            say("one instance holding all: start to ready, s", round(restart_c, 2))
            say("one instance holding all: of which loading, s", round(c.loading_s(), 2))
            say("one instance holding all: RSS growth (MiB)", all_growth >> 20)
            say("one instance holding all: bytes per key (RSS)", round(all_growth / keys))
            for name in ("a", "b"):
                say(
                    f"instance {name}: RSS growth / one instance holding all",
                    round(grown[name] / all_growth, 3),
                )
        finally:
            for instance in instances:
                instance.kill()
    say("logs", workdir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument(
        "--session-ms",
        type=int,
        default=6000,
        help="[listeners.http] idempotency_session_timeout_ms (Apache Kafka's minimum is 6000 "
        "unless group.min.session.timeout.ms is lowered)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.keys, args.session_ms))
