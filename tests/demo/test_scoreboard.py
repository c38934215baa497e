"""A stadium scoreboard against a real bridge's MQTT listener: QoS 1 scores that reach Kafka,
a retained last score for late subscribers, its token checked, and its will on a dropped link."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog
import structlog.testing

from bridge.edge.tokens import mint_token
from demo import kafka_io
from demo.fixtures import fixture
from demo.scoreboard import Schedule, Scoreboard

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "score.json"
WAIT_S = 60.0  # an upper bound for a shared machine, not a performance claim
SECRET = "scoreboard-test-secret-0123456789abcdef"

ROUTES = """
[guard]
secret = "{secret}"
algorithms = ["HS256"]

[[routes]]
name = "scores"
topic = "{scores}"
key = "{{match}}"
schema = "schemas/score.json"

[routes.mqtt]
topic = "stadium/{{match}}/score"

[routes.access]
publish = ["scoreboard"]
subscribe = ["anonymous"]

[[routes]]
name = "status"
topic = "{status}"
key = "{{match}}"

[routes.mqtt]
topic = "stadium/{{match}}/status"

[routes.access]
publish = ["scoreboard"]
subscribe = ["anonymous"]
"""


async def values_until(bootstrap: str, topic: str, done: Any) -> list[Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        records = await kafka_io.read_to_end(bootstrap, "test-reader", [topic])
        found = [r.value for r in records]
        if done(found):
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.2)


def first_message(port: int, topic_filter: str) -> mqtt.MQTTMessage:
    """What a late MQTT subscriber receives first (blocking; run in a thread)."""
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, message: received.put(message)
    client.on_connect = lambda c, u, f, r, p: c.subscribe(topic_filter, qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        return received.get(timeout=WAIT_S)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_a_scoreboard_publishes_retained_scores_and_its_will(
    kafka_bootstrap: str, new_topic: Any, bridge_factory: Any
) -> None:
    scores, status = await new_topic(), await new_topic()
    routes = ROUTES.format(secret=SECRET, scores=scores, status=status)
    bridge: Any = await bridge_factory(routes, frontends=["mqtt"])
    port = bridge.frontend("mqtt").port
    token = mint_token(bridge.config.guard_settings, "scoreboard-0", ["scoreboard"], 600)
    board = Scoreboard(0, "127.0.0.1", port, token, Schedule(0.05, 2, 2), seed=3)
    stop = asyncio.Event()
    task = asyncio.create_task(board.run(stop))
    try:
        reports = await values_until(kafka_bootstrap, scores, lambda found: len(found) >= 5)
        match = fixture(0, 0)
        parsed = [json.loads(value) for value in reports]
        assert parsed[0] == {
            "match": match.id,
            "home": 0,
            "away": 0,
            "minute": 0,
            "status": "SCHEDULED",
        }
        assert [p["minute"] for p in parsed[1:5]] == [1, 2, 3, 4]

        late = await asyncio.to_thread(first_message, port, "stadium/+/score")
        assert late.retain and late.qos == 1
        assert json.loads(late.payload)["match"] == match.id

        # The link drops without a DISCONNECT: the bridge publishes the will; the device
        # reconnects by itself and says it is back.
        assert board.client is not None
        board.client.socket().shutdown(socket.SHUT_RDWR)
        await values_until(
            kafka_bootstrap, status, lambda found: found[-2:] == [b"offline", b"online"]
        )
    finally:
        stop.set()
        await task
    said = await values_until(kafka_bootstrap, status, lambda found: found[-1] == b"offline")
    assert said[0] == b"online"  # and a goodbye on a clean stop, the will not needed


async def test_a_scoreboard_without_the_scoreboard_role_cannot_publish(
    kafka_bootstrap: str, new_topic: Any, bridge_factory: Any
) -> None:
    scores, status = await new_topic(), await new_topic()
    bridge: Any = await bridge_factory(
        ROUTES.format(secret=SECRET, scores=scores, status=status), frontends=["mqtt"]
    )
    token = mint_token(bridge.config.guard_settings, "mallory", ["bettor"], 600)
    board = Scoreboard(0, "127.0.0.1", bridge.frontend("mqtt").port, token, Schedule(0.05, 1, 1), 1)
    stop = asyncio.Event()
    task = asyncio.create_task(board.run(stop))
    # A legitimate scoreboard alongside, so the test waits for something that does happen.
    good = Scoreboard(
        1,
        "127.0.0.1",
        bridge.frontend("mqtt").port,
        mint_token(bridge.config.guard_settings, "scoreboard-1", ["scoreboard"], 600),
        Schedule(0.05, 1, 1),
        2,
    )
    good_task = asyncio.create_task(good.run(stop))
    try:
        found = await values_until(kafka_bootstrap, scores, lambda found: len(found) >= 10)
    finally:
        stop.set()
        await asyncio.gather(task, good_task)
    matches = {json.loads(value)["match"] for value in found}
    assert matches == {fixture(1, 0).id}


async def test_no_score_is_lost_when_the_bridge_is_killed_mid_match(
    kafka_bootstrap: str, new_topic: Any, tmp_path: Any
) -> None:
    """The bridge is SIGKILLed mid-match and started again on the same port: the scoreboard
    reconnects and resends what was not acknowledged, so every minute of the match is in Kafka
    (QoS 1: a publish the bridge took but could not acknowledge may come twice, never not at all)."""
    from harness import BridgeProcess, config_text, free_port

    scores, status = await new_topic(), await new_topic()
    port = free_port()
    config = tmp_path / "routing.toml"
    routes = ROUTES.format(secret=SECRET, scores=scores, status=status)
    schema = SCHEMA_FILE
    routes = routes.replace('"schemas/score.json"', f'"{schema}"')
    config.write_text(config_text(routes, mqtt_port=port))
    bridge = await BridgeProcess(config, kafka_bootstrap).astart(wait_port=port)
    from bridge.model.config import load_config

    token = mint_token(load_config(config).guard_settings, "scoreboard-0", ["scoreboard"], 600)
    board = Scoreboard(0, "127.0.0.1", port, token, Schedule(0.1, 2, 50), seed=5)
    stop = asyncio.Event()
    logs = structlog.testing.LogCapture()
    structlog.configure(processors=[logs])
    task = asyncio.create_task(board.run(stop))
    try:
        await values_until(kafka_bootstrap, scores, lambda found: len(found) >= 10)
        bridge.kill()  # SIGKILL: no goodbye, unacknowledged publishes in flight
        await asyncio.sleep(1.0)  # the scoreboard keeps playing (and queueing) while it is away
        bridge = await BridgeProcess(config, kafka_bootstrap).astart(wait_port=port)
        found = await values_until(
            kafka_bootstrap,
            scores,
            lambda found: any(json.loads(v)["status"] == "COMPLETED" for v in found),
        )
    finally:
        stop.set()
        await task
        bridge.stop()
    minutes = [json.loads(v)["minute"] for v in found if json.loads(v)["match"] == fixture(0, 0).id]
    last = max(minutes)
    assert sorted(set(minutes)) == list(range(0, last + 1)), minutes  # no minute missing
    assert len(minutes) - len(set(minutes)) <= 2, minutes  # at most the in-flight ones twice
    # A publish waits for its PUBACK across the outage: never reported failed, never skipped.
    assert not [e for e in logs.entries if e["event"] == "scoreboard.publish_failed"]
    structlog.reset_defaults()
