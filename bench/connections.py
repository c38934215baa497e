"""Concurrent connections against ``edgebridge run --workers N``: how many it holds, what each
costs, and how fast one record fans out to all of them, from 1k up to ``--steps``' last figure.

Processes: the embedded broker (Tansu, started here), the bridge supervisor and its workers,
and ``--generators`` load-generator processes (bench/scale_clients.py), each on its own
loopback source address (127.0.0.10, .11, ...) because every process here may open at most
20,000 files and one source address has ~28k ephemeral ports per destination port. Half the
clients are idle SSE streams, half MQTT 5 sessions subscribed at QoS 0 (``--mqtt-share``).

At each step: connect up to the step's client count, measure the bridge's RSS, then produce
``--records`` records ``--interval`` s apart; every client timestamps every record. Prints one
``name: value`` figure per line; the baseline measured in the same run is the load generator's
own cost per connection (a bare asyncio protocol on the other end of the same sockets) and
the first step's latency. Writes a JSON of all steps and, with ``--plot``, a PNG of p99
latency and bridge CPU versus connected clients. Example::

    .venv/bin/python bench/connections.py --workers 8 --generators 8 \\
        --steps 1000,10000,25000,50000,100000 --plot docs/scale-connections.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from scale_clients import Plan, generator_main, raise_nofile, reachable, record, source_ip

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.kafka.embedded_broker import EmbeddedBroker, pick_free_port  # noqa: E402
from bridge.kafka.topic_admin import ensure_topics  # noqa: E402
from bridge.model.config import KafkaSettings, TopicSpec  # noqa: E402

TOPIC = "scale"

CONFIG = """
[bridge]
name = "scale-bench"
log_level = "warning"

[kafka]
fetch_max_wait_ms = 10

[kafka.topics.{topic}]
partitions = 1

[listeners.mqtt]
host = "127.0.0.1"
port = {mqtt_port}

[listeners.http]
host = "127.0.0.1"
port = {http_port}

[[routes]]
name = "scale"
topic = "{topic}"
key = "{{src}}"
[routes.mqtt]
topic = "scale/{{src}}"
[routes.sse]
path = "/scale/all"
{sse_options}
"""


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class BridgeUnderTest:
    """``edgebridge run --workers N`` on fixed loopback ports against ``bootstrap``."""

    def __init__(self, workers: int, bootstrap: str, sse_options: str = "") -> None:
        self.workers = workers
        self.http_port, self.mqtt_port = pick_free_port(), pick_free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="scale-"))
        self.config = self.dir / "routing.toml"
        self.config.write_text(
            CONFIG.format(
                topic=TOPIC,
                mqtt_port=self.mqtt_port,
                http_port=self.http_port,
                sse_options=sse_options,
            )
        )
        self.log = self.dir / "bridge.log"
        self.env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> None:
        command = [sys.executable, "-m", "bridge.process.cli", "run", "--config", str(self.config)]
        command += ["--workers", str(self.workers), "--log-format", "json"]
        command += ["--log-level", "info"]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while self.log.read_bytes().count(b'"bridge.started"') < self.workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log.read_text()[-3000:])
            time.sleep(0.2)

    def processes(self) -> list[psutil.Process]:
        """The supervisor and its workers (with ``--workers 1`` the supervisor is the worker)."""
        assert self.proc is not None
        supervisor = psutil.Process(self.proc.pid)
        return [supervisor, *supervisor.children(recursive=True)]

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in self.processes())

    def cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Generators:
    def __init__(self, count: int, bridge: BridgeUnderTest, qos: int = 0, expiry: int = 0) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for i in range(count):
            ip = source_ip(i)
            if not reachable(ip):
                raise RuntimeError(f"cannot bind {ip}")
            plan = Plan(
                i, ip, bridge.http_port, bridge.mqtt_port, "/scale/all", "scale/+", qos, expiry
            )
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=generator_main, args=(plan, theirs), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)

    def ask(self, command: str, *args: Any) -> list[Any]:
        for pipe in self.pipes:
            pipe.send((command, args))
        return [pipe.recv() for pipe in self.pipes]

    def cpu(self) -> float:
        return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in self.procs)

    def stop(self) -> None:
        self.ask("stop")
        for proc in self.procs:
            proc.join(10)


async def produce(bootstrap: str, first: int, count: int, interval: float) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for n in range(first, first + count):
            await producer.send_and_wait(TOPIC, record(n), key=b"all")
            await asyncio.sleep(interval)
    finally:
        await producer.stop()


def connect_to(gens: Generators, target: int, mqtt_share: float, rate: float) -> dict[str, int]:
    """Add clients evenly over the generators until ``target`` are open."""
    status = gens.ask("status")
    have = sum(s["clients"] for s in status)
    per = max(0, target - have) // len(gens.pipes)
    mqtt = int(per * mqtt_share)
    results = gens.ask("add", per - mqtt, mqtt, rate / len(gens.pipes))
    deadline = time.monotonic() + 60
    while True:  # CONNACK/SUBACK/200 can trail the TCP accept
        ok = sum(s["ok"] for s in results)
        if ok >= sum(s["clients"] for s in results) or time.monotonic() > deadline:
            break
        time.sleep(1)
        results = gens.ask("status")
    return {
        "clients": sum(s["clients"] for s in results),
        "accepted": sum(s["ok"] for s in results),
        "closed": sum(s["closed"] for s in results),
        "refused": sum(s["refused"] for s in results),
        "generator_rss": sum(s["rss"] for s in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--generators", type=int, default=8)
    parser.add_argument("--steps", default="1000,5000,10000,25000,50000,100000")
    parser.add_argument("--mqtt-share", type=float, default=0.5)
    parser.add_argument("--records", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--connect-rate", type=float, default=4000, help="new connections/s")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--json", type=Path, default=Path("/tmp/scale-connections.json"))
    args = parser.parse_args()
    raise_nofile()
    steps = [int(s) for s in args.steps.split(",")]
    results: list[dict[str, Any]] = []
    broker = EmbeddedBroker()
    broker.start_blocking()
    settings = KafkaSettings(bootstrap=broker.bootstrap)
    asyncio.run(ensure_topics(settings, broker.bootstrap, [TopicSpec(TOPIC, 1)]))
    bridge = BridgeUnderTest(args.workers, broker.bootstrap)
    bridge.start()
    gens = Generators(args.generators, bridge)
    try:
        idle_rss = bridge.rss()
        generators_idle_rss = sum(s["rss"] for s in gens.ask("status"))
        print(f"workers: {args.workers}")
        print(f"generators: {args.generators}")
        print(f"bridge_idle_rss_mib: {idle_rss / 2**20:.0f}")
        seq = 0
        for target in steps:
            overflows, began = listen_overflows(), time.monotonic()
            conn = connect_to(gens, target, args.mqtt_share, args.connect_rate)
            conn["connect_s"] = time.monotonic() - began
            conn["listen_overflows"] = listen_overflows() - overflows
            time.sleep(2)
            rss = bridge.rss()
            cpu0, gcpu0, t0 = bridge.cpu(), gens.cpu(), time.monotonic()
            asyncio.run(produce(broker.bootstrap, seq, args.records, args.interval))
            time.sleep(3)
            elapsed = time.monotonic() - t0
            cpu, gcpu = bridge.cpu() - cpu0, gens.cpu() - gcpu0
            collected = gens.ask("collect", seq)
            seq += args.records
            latencies = [lat for c in collected for lat in c["latencies"]]
            counts = [n for c in collected for n in c["counts"]]
            accepted = conn["accepted"]
            step = {
                "target": target,
                **conn,
                "bridge_rss_mib": rss / 2**20,
                "rss_per_conn_kib": (rss - idle_rss) / max(1, accepted) / 1024,
                "generator_rss_per_conn_kib": (conn["generator_rss"] - generators_idle_rss)
                / max(1, conn["clients"])
                / 1024,
                "delivered": sum(counts),
                "expected": accepted * args.records,
                "complete_clients": sum(1 for n in counts if n >= args.records),
                "p50_ms": percentile(latencies, 0.50) * 1000,
                "p99_ms": percentile(latencies, 0.99) * 1000,
                "max_ms": max(latencies, default=float("nan")) * 1000,
                "bridge_cpu_pct": 100 * cpu / elapsed,
                "generator_cpu_pct": 100 * gcpu / elapsed,
            }
            results.append(step)
            for name in (
                "accepted", "refused", "closed", "connect_s", "listen_overflows", "rss_per_conn_kib", "generator_rss_per_conn_kib",
                "delivered", "expected", "complete_clients", "p50_ms", "p99_ms", "max_ms",
                "bridge_cpu_pct", "generator_cpu_pct",
            ):  # fmt: skip
                value = step[name]
                shown = f"{value:.1f}" if isinstance(value, float) else value
                print(f"clients_{target}_{name}: {shown}", flush=True)
        if results:
            base = results[0]
            print(f"baseline_p99_ms_at_{base['target']}: {base['p99_ms']:.1f}")
            last = results[-1]
            ratio = last["p99_ms"] / base["p99_ms"]
            print(f"p99_ratio_{last['target']}_vs_{base['target']}: {ratio:.1f}")
    finally:
        args.json.write_text(json.dumps(results, indent=1))
        gens.stop()
        bridge.stop()
        broker.stop_blocking()
    if args.plot and results:
        plot(results, args.plot)
    return 0


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [r["accepted"] for r in results]
    fig, left = plt.subplots(figsize=(8, 4.5))
    left.plot(clients, [r["p99_ms"] for r in results], "o-", color="tab:red", label="p99 latency")
    left.plot(
        clients, [r["p50_ms"] for r in results], "o--", color="tab:orange", label="p50 latency"
    )
    left.set_xscale("log")
    left.set_xlabel("connected clients (half SSE, half MQTT)")
    left.set_ylabel("record fan-out latency (ms)")
    right = left.twinx()
    right.plot(
        clients, [r["bridge_cpu_pct"] for r in results], "s-", color="tab:blue", label="bridge CPU"
    )
    right.set_ylabel("bridge CPU while fanning out (% of one core)")
    lines = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
    left.legend(lines, labels, loc="upper left")
    left.set_title("edgebridge run --workers N on 2 cores: one record to every client")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
