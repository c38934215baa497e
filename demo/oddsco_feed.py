"""OddsCo: the demo's second odds provider, publishing over MQTT in its own shape.

It follows the live scores as any MQTT app would (``stadium/+/score``) and prices each report
with its own model, then publishes the price to ``providers/oddsco/{match}`` at QoS 1 as OddsCo
writes prices everywhere: implied probabilities in percent, margin included, the match clock in
seconds and a millisecond timestamp (schemas/oddsco-price.json). It knows nothing of the house's
shape. The bridge's ``odds-oddsco`` route transforms each price into the canonical odds record
(schemas/odds.json) in the same ``odds`` topic the house's engine writes, with
``"provider": "oddsco"`` (docs/data-products.md, "Standardization"). A paho-mqtt client with a
token of role ``odds-provider``; nothing of the bridge's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from demo.fixtures import fixture_by_id
from demo.odds import win_probabilities

log = structlog.get_logger(__name__)

CLIENT_ID = "oddsco-feed"
SCORES = "stadium/+/score"
MARGIN = 1.06  # OddsCo's book: its percentages add up to 106 %
PCT_RANGE = (2.0, 99.0)  # decimal odds 50.0 .. 1.01


def price_topic(match: str) -> str:
    return f"providers/oddsco/{match}"


def oddsco_price(score: dict[str, Any], now_ms: int, seq: int) -> dict[str, Any] | None:
    """OddsCo's price for one score report (None: not a demo fixture, or the market is shut)."""
    fixture = fixture_by_id(str(score.get("match")))
    if fixture is None or score.get("status", "LIVE") not in ("SCHEDULED", "LIVE"):
        return None
    minute = int(score["minute"])
    home, _, away = win_probabilities(
        int(score["home"]), int(score["away"]), minute, fixture.home_strength,
        fixture.away_strength,
    )  # fmt: skip
    total = home + away  # draw no bet: a draw refunds, so only home vs away is priced
    low, high = PCT_RANGE
    return {
        "fixture_id": fixture.id,
        "home_pct": round(min(max(100 * home / total * MARGIN, low), high), 2),
        "away_pct": round(min(max(100 * away / total * MARGIN, low), high), 2),
        "clock_s": minute * 60,
        "ts_ms": now_ms,
        "feed_seq": seq,
    }


class OddsCoFeed:
    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.published = 0  # prices the bridge acknowledged (PUBACK 0)
        self.refused = 0  # prices the bridge refused (a PUBACK reason code >= 0x80)
        self._seq = itertools.count(1)

    async def run(self, stop: asyncio.Event) -> None:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, protocol=mqtt.MQTTv5
        )
        if self.token is not None:
            client.username_pw_set("oddsco", self.token)
        client.reconnect_delay_set(min_delay=1, max_delay=5)

        def on_connect(
            client: mqtt.Client, userdata: object, flags: object, reason: Any, _: object
        ) -> None:
            if not reason.is_failure:
                client.subscribe(SCORES, qos=1)
                log.info("oddsco.connected")

        def on_message(client: mqtt.Client, userdata: object, message: Any) -> None:
            try:
                score = json.loads(message.payload)
            except ValueError:
                return
            if not isinstance(score, dict):
                return
            price = oddsco_price(score, int(time.time() * 1000), next(self._seq))
            if price is not None:
                client.publish(price_topic(price["fixture_id"]), json.dumps(price), qos=1)

        def on_publish(
            client: mqtt.Client, userdata: object, mid: int, reason: Any, _: object
        ) -> None:
            if reason.is_failure:
                self.refused += 1
                log.warning("oddsco.refused", reason=str(reason))
            else:
                self.published += 1

        client.on_connect = on_connect
        client.on_message = on_message
        client.on_publish = on_publish
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
            client.loop_stop()
