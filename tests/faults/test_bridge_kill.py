"""Two bridge instances under mixed load; one is SIGKILLed. Its clients move to the survivor the
way real ones do (paho reconnects to the next address, SSE readers reconnect with Last-Event-ID,
HTTP clients retry elsewhere), and nothing is lost: every acknowledged value is in Kafka, every
SSE reader holds exactly Kafka's sequence, every persistent MQTT session every record."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from fault_load import Instance, MixedLoad, mixed_routes
from harness import BridgeProcess, config_text, free_port

pytestmark = pytest.mark.broker  # starts its own broker or bridges: not in `make test-fast`


def _instance(
    tmp_path: Path, name: str, routes: str, bootstrap: str
) -> tuple[BridgeProcess, Instance]:
    instance = Instance(http_port=free_port(), mqtt_port=free_port())
    path = tmp_path / f"{name}.toml"
    path.write_text(config_text(routes, instance.mqtt_port, instance.http_port))
    return BridgeProcess(path, bootstrap), instance


@pytest.mark.timeout(150)
async def test_sigkill_of_one_instance_loses_nothing(tmp_path: Path, kafka_bootstrap: str) -> None:
    s = uuid.uuid4().hex[:8]
    topic = f"kill-{s}"
    routes = mixed_routes(s, topic)
    victim, a = _instance(tmp_path, "a", routes, kafka_bootstrap)
    survivor, b = _instance(tmp_path, "b", routes, kafka_bootstrap)
    await victim.astart(wait_port=a.http_port)
    await survivor.astart(wait_port=b.http_port)
    try:
        load = await MixedLoad(s, topic, [a, b]).start()
        await load.wait_acked(60)
        await asyncio.to_thread(victim.kill)
        killed_at = time.monotonic()
        recovery = await load.recovery_s(killed_at, timeout=60)
        await load.wait_acked(load.acked() + 60)
        stored = await load.finish(kafka_bootstrap)
    finally:
        victim.stop()
        survivor.stop()
    summary = load.summary()
    print(f"recovery_s={recovery:.2f} {summary}")
    assert load.problems(stored) == []
    # The clients of the killed instance really moved (the test is not vacuous).
    assert load.sse[0].connects >= 2, summary
    assert load.subs[0].connects >= 2, summary
    assert "Traceback" not in survivor.logs()
