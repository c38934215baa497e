"""Stadium scoreboards: simulated IoT devices reporting live scores over MQTT.

Each scoreboard is one MQTT 5 connection (paho-mqtt, a client any device could run) that plays
a series of matches: a report per minute to ``stadium/{match}/score`` at QoS 1 and retained (a
new subscriber gets the last score at once), ``online``/``offline`` on ``stadium/{match}/status``
with ``offline`` registered as the will, so a device that drops is announced by the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from demo.fixtures import Fixture, fixture
from demo.match_sim import Score, before_kick_off, next_score

log = structlog.get_logger(__name__)
PUBLISH_TIMEOUT_S = 10.0  # a warning after this long without a PUBACK (paho keeps trying)
ACK_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Schedule:
    tick_s: float = 1.0  # one match minute
    pre_match_ticks: int = 5  # minutes on the board before kick-off (bets are open)
    break_ticks: int = 5  # pause between one match and the next


def score_topic(match: str) -> str:
    return f"stadium/{match}/score"


def status_topic(match: str) -> str:
    return f"stadium/{match}/status"


class Scoreboard:
    """One device: plays the matches of ``slot`` one after the other until stopped."""

    def __init__(
        self, slot: int, host: str, port: int, token: str | None, schedule: Schedule, seed: int
    ) -> None:
        self.slot = slot
        self.host = host
        self.port = port
        self.token = token
        self.schedule = schedule
        self.rng = random.Random(seed)
        self.client: mqtt.Client | None = None
        self.match_id = ""
        self._acked: set[int] = set()  # message ids acknowledged on the current connection

    async def run(self, stop: asyncio.Event) -> None:
        round_number = 0
        while not stop.is_set():
            current = fixture(self.slot, round_number)
            await self._play(current, stop)
            round_number += 1
            await _sleep(stop, self.schedule.break_ticks * self.schedule.tick_s)
        await asyncio.to_thread(self._disconnect)

    async def _play(self, match: Fixture, stop: asyncio.Event) -> None:
        await asyncio.to_thread(self._connect, match)
        score = before_kick_off(match)
        await self._publish(score)
        await _sleep(stop, self.schedule.pre_match_ticks * self.schedule.tick_s)
        while not stop.is_set() and score.status != "COMPLETED":
            score = next_score(score, match, self.rng)
            await self._publish(score)
            await _sleep(stop, self.schedule.tick_s)

    def _connect(self, match: Fixture) -> None:
        """A fresh connection per match: the will names the match being played."""
        self._disconnect()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"scoreboard-{self.slot}",
            protocol=mqtt.MQTTv5,
        )
        if self.token is not None:
            client.username_pw_set(f"scoreboard-{self.slot}", self.token)
        client.will_set(status_topic(match.id), b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.match_id = match.id

        def on_connect(
            client: mqtt.Client, userdata: object, flags: object, reason: Any, _: object
        ) -> None:
            # Every (re)connection, e.g. after the bridge restarted: the will said "offline".
            if not reason.is_failure:
                client.publish(status_topic(match.id), b"online", qos=1, retain=True)
                log.info("scoreboard.connected", slot=self.slot, match=match.id)

        def on_publish(
            client: mqtt.Client, userdata: object, mid: int, reason: Any, _: object
        ) -> None:
            self._acked.add(mid)  # the bridge's PUBACK: Kafka has it (resent ones included)

        client.on_connect = on_connect
        client.on_publish = on_publish
        self._acked = set()
        # Asynchronous: paho keeps (re)connecting in its thread while the bridge starts.
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        self.client = client

    def _disconnect(self) -> None:
        """Say goodbye: a clean DISCONNECT, so the broker does not publish the will."""
        if self.client is not None:
            info = self.client.publish(status_topic(self.match_id), b"offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(PUBLISH_TIMEOUT_S)
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    async def _publish(self, score: Score) -> None:
        """Publish at QoS 1 and wait for the bridge's PUBACK (Kafka has the score).

        While the link is down (the bridge restarting), paho keeps the publish in its session
        and sends it again once it has reconnected (MQTT 5, clean start on the first connection
        only), so the score is not lost. ``wait_for_publish`` and ``is_published`` raise "not
        currently connected" for such a publish even after it went out, so the PUBACKs are
        taken from ``on_publish`` instead."""
        assert self.client is not None
        info = self.client.publish(
            score_topic(score.match), json.dumps(score.to_json()), qos=1, retain=True
        )
        waited = 0.0
        while info.mid not in self._acked:
            if waited >= PUBLISH_TIMEOUT_S and waited % PUBLISH_TIMEOUT_S < ACK_POLL_S:
                log.warning(
                    "scoreboard.publish_waiting",
                    match=score.match,
                    minute=score.minute,
                    waited_s=round(waited),
                    connected=self.client.is_connected(),
                )
            await asyncio.sleep(ACK_POLL_S)
            waited += ACK_POLL_S
        self._acked.discard(info.mid)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
