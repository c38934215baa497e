"""Longer broker-outage runs than CI affords: repeated Kafka cuts (proxy) or Tansu SIGKILLs (on
moto S3) under mixed MQTT/HTTP/SSE load, with the same checks as tests/faults. Prints, per
round, the seconds from the broker's return until every publisher was acknowledged again (the
promise: under 5 s), then the totals; the baseline is the same load's acknowledged-publish rate
before the first fault, in the same run. Example::

    .venv/bin/python bench/fault_soak.py --fault cut --rounds 5 --outage 10
    .venv/bin/python bench/fault_soak.py --fault crash --rounds 3 --outage 5
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from fault_load import Instance, MixedLoad, mixed_routes
from kafka_faults import FaultyKafka


async def soak(fault: str, rounds: int, outage: float, steady: float) -> int:
    kafka = await FaultyKafka(persistent=fault == "crash").start()
    s = uuid.uuid4().hex[:8]
    topic = f"soak-{s}"
    bridge = await kafka.start_bridge(mixed_routes(s, topic), ["mqtt", "sse", "http"])
    try:
        assert bridge.web is not None
        load = MixedLoad(s, topic, [Instance(bridge.web.port, bridge.frontend("mqtt").port)])
        await load.start()
        before = load.acked()
        await asyncio.sleep(steady)
        print(f"baseline_acks_per_s: {(load.acked() - before) / steady:.1f}")
        worst = 0.0
        for n in range(rounds):
            if fault == "cut":
                kafka.proxy.cut()
                await asyncio.sleep(outage)
                kafka.proxy.restore()
            else:
                await kafka.crash()
                await asyncio.sleep(outage)
                await kafka.restart()
            back = time.monotonic()
            recovery = await load.recovery_s(back, timeout=120)
            worst = max(worst, recovery)
            print(f"round_{n}_recovery_s: {recovery:.2f}", flush=True)
            await asyncio.sleep(steady)
        stored = await load.finish(kafka.direct, timeout=120)
        problems = load.problems(stored)
        print(f"worst_recovery_s: {worst:.2f}")
        print(f"acked: {load.acked()}")
        print(f"records_in_kafka: {sum(len(v) for v in stored.values())}")
        print(f"problems: {len(problems)}")
        for problem in problems:
            print(f"problem: {problem}")
        return 1 if problems else 0
    finally:
        await bridge.stop()
        await kafka.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=["cut", "crash"], default="cut")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--outage", type=float, default=10)
    parser.add_argument("--steady", type=float, default=5, help="seconds of service between faults")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return asyncio.run(soak(args.fault, args.rounds, args.outage, args.steady))


if __name__ == "__main__":
    sys.exit(main())
