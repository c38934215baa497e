"""Resume storm: ``--sse`` SSE clients and ``--mqtt`` persistent MQTT 5 sessions (QoS 1) are cut
at once while records keep flowing, then all reconnect at the same moment (SSE with
Last-Event-ID, MQTT with its session). Measures how long until every client has caught up with
the newest record, and checks that every client received exactly the produced sequence (SSE: no
gap, no duplicate; MQTT QoS 1: no gap, duplicates counted).

The baseline, measured in the same run, is the p99 delivery latency of the records produced
while all clients were connected (steady-state fan-out to the same clients). Example::

    .venv/bin/python bench/resume_storm.py --workers 8 --generators 8 --sse 10000 --mqtt 10000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from connections import (
    TOPIC,
    BridgeUnderTest,
    Generators,
    listen_overflows,
    percentile,
    produce,
)
from scale_clients import raise_nofile

from bridge.kafka.embedded_broker import EmbeddedBroker
from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec


def wait_caught_up(
    gens: Generators, last_seq: int, timeout: float, retries: list[int] | None = None
) -> tuple[float, int, float]:
    """Seconds until no client lacks ``last_seq`` (or timeout), how many still lack it, and
    seconds until 99% had it. With ``retries``, clients the bridge closed are reconnected (as
    real clients do) and counted there."""
    start = time.monotonic()
    clients = sum(s["clients"] for s in gens.ask("status"))
    p99 = float("nan")
    while True:
        if retries is not None:
            retries.append(sum(gens.ask("retry")))
        behind = sum(gens.ask("behind", last_seq))
        elapsed = time.monotonic() - start
        if behind <= clients // 100 and p99 != p99:
            p99 = elapsed
        if behind == 0 or elapsed > timeout:
            return elapsed, behind, p99
        time.sleep(0.25)


def check(gens: Generators, produced: int) -> dict[str, int]:
    """Compare every client's received sequence with 0..produced-1."""
    want = list(range(produced))
    out = {"sse_exact": 0, "sse_wrong": 0, "mqtt_complete": 0, "mqtt_gaps": 0, "mqtt_dups": 0}
    for sequences in gens.ask("sequences"):
        for kind, seqs in sequences:
            if kind == "SseClient":
                out["sse_exact" if seqs == want else "sse_wrong"] += 1
            else:
                distinct = sorted(set(seqs))
                out["mqtt_complete" if distinct == want else "mqtt_gaps"] += 1
                out["mqtt_dups"] += len(seqs) - len(set(seqs))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--generators", type=int, default=8)
    parser.add_argument("--sse", type=int, default=10000)
    parser.add_argument("--mqtt", type=int, default=10000)
    parser.add_argument("--before", type=int, default=10, help="records while connected")
    parser.add_argument("--during", type=int, default=50, help="records while disconnected")
    parser.add_argument("--after", type=int, default=20, help="records during the reconnect")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    raise_nofile()
    broker = EmbeddedBroker()
    broker.start_blocking()
    asyncio.run(
        ensure_topics(
            KafkaSettings(bootstrap=broker.bootstrap), broker.bootstrap, [TopicSpec(TOPIC, 1)]
        )
    )
    bridge = BridgeUnderTest(args.workers, broker.bootstrap)
    bridge.start()
    gens = Generators(args.generators, bridge, qos=1, expiry=3600)
    results: dict[str, Any] = {}
    try:
        n = len(gens.pipes)
        status = gens.ask("add", args.sse // n, args.mqtt // n, 4000 / n)
        clients = sum(s["clients"] for s in status)
        wait_caught_up_ok = time.monotonic() + 60
        while sum(s["ok"] for s in gens.ask("status")) < clients:
            if time.monotonic() > wait_caught_up_ok:
                break
            time.sleep(0.5)
        results["clients"] = clients
        results["connected"] = sum(s["ok"] for s in gens.ask("status"))
        asyncio.run(produce(broker.bootstrap, 0, args.before, args.interval))
        wait_caught_up(gens, args.before - 1, 60)
        latencies = [lat for c in gens.ask("collect", 0) for lat in c["latencies"]]
        results["baseline_connected_p99_ms"] = percentile(latencies, 0.99) * 1000
        results["dropped"] = sum(gens.ask("drop"))
        time.sleep(1)
        asyncio.run(produce(broker.bootstrap, args.before, args.during, args.interval))

        async def storm() -> None:  # reconnect everyone while records keep coming
            first = args.before + args.during
            flow = asyncio.create_task(produce(broker.bootstrap, first, args.after, args.interval))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, gens.ask, "resume", 1e12)
            await flow

        started, cpu0, overflows0 = time.monotonic(), bridge.cpu(), listen_overflows()
        asyncio.run(storm())
        total = args.before + args.during + args.after
        retries: list[int] = []
        caught_s, behind, p99_s = wait_caught_up(gens, total - 1, args.timeout, retries)
        results["catch_up_s"] = time.monotonic() - started if not behind else float("nan")
        results["catch_up_99pct_s"] = time.monotonic() - started - caught_s + p99_s
        results["clients_reconnected_after_a_refusal"] = sum(retries)
        # Handshakes the kernel dropped because an accept queue was full (each costs the
        # client a SYN retransmission: 1, 3, 7 ... s).
        results["listen_overflows_during_storm"] = listen_overflows() - overflows0
        # CPU time is less sensitive than wall time to what else runs on the machine.
        results["bridge_cpu_s_storm"] = bridge.cpu() - cpu0
        results["bridge_cpu_ms_per_client"] = 1000 * results["bridge_cpu_s_storm"] / clients
        results["tail_after_last_record_s"] = caught_s
        results["still_behind"] = behind
        results.update(check(gens, total))
        results["bridge_rss_mib"] = bridge.rss() / 2**20
        results["load_average_1m"] = os.getloadavg()[0]
    finally:
        for name, value in results.items():
            print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
        gens.stop()
        bridge.stop()
        broker.stop_blocking()
    return 0


if __name__ == "__main__":
    sys.exit(main())
