"""demo/oddsco_feed.py, the second odds provider, against a bridge running the shipped
routing.toml (its own topic names, MQTT only, on a free port): a score published by a
scoreboard (paho) becomes an OddsCo price over MQTT, and the bridge's odds-oddsco route makes it
the canonical odds record in the odds topic, read back with a plain aiokafka consumer. A price
the transform cannot make a valid record of is refused with PUBACK 0x83 and kept in the dead
letter topic, and nothing reaches the odds topic."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid

import pytest
from harness import REPO
from kafka_read import read_topic
from shipped import shipped_config as shipped

from bridge.edge.tokens import mint_token
from bridge.model.config import Config, ListenerSettings
from bridge.process.runtime import Bridge
from demo.fixtures import fixture
from demo.oddsco_feed import OddsCoFeed, oddsco_price

sys.path.insert(0, str(REPO / "tests" / "protocols" / "mqtt"))
from mqtt_support import Paho

pytestmark = pytest.mark.broker


def test_a_price_is_in_oddsco_shape_and_only_for_an_open_market() -> None:
    match = fixture(0, 0)
    score = {"match": match.id, "home": 1, "away": 0, "minute": 30, "status": "LIVE"}
    price = oddsco_price(score, 1_733_000_000_123, 7)
    assert price is not None
    assert set(price) == {"fixture_id", "home_pct", "away_pct", "clock_s", "ts_ms", "feed_seq"}
    assert (price["fixture_id"], price["clock_s"], price["ts_ms"]) == (
        match.id,
        1800,
        1733000000123,
    )
    assert price["home_pct"] > price["away_pct"]  # leading at home
    assert 100 < price["home_pct"] + price["away_pct"] <= 107  # OddsCo's margin
    assert oddsco_price({**score, "status": "COMPLETED"}, 0, 1) is None
    assert oddsco_price({**score, "match": "nobody-nowhere-0"}, 0, 1) is None


def shipped_config(bootstrap: str, suffix: str) -> Config:
    """routing.toml as shipped, with topics of its own and only an MQTT listener (free port)."""
    return shipped(
        bootstrap,
        suffix,
        mqtt_listener=ListenerSettings("127.0.0.1", 0),
        http_listener=None,
        grpc_listener=None,
    )


async def test_oddsco_prices_become_canonical_odds_records(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    config = shipped_config(kafka_bootstrap, suffix)
    assert config.guard_settings is not None
    bridge = Bridge(config, frontends=["mqtt"])
    await bridge.start()
    port = bridge.frontend("mqtt").port
    stop = asyncio.Event()
    feed = OddsCoFeed(
        "127.0.0.1", port, mint_token(config.guard_settings, "oddsco", ["odds-provider"])
    )
    task = asyncio.create_task(feed.run(stop))
    board = Paho(port, f"board-{suffix}")
    provider = Paho(port, f"provider-{suffix}")
    try:
        await board.connect(
            auth=("board", mint_token(config.guard_settings, "board", ["scoreboard"]))
        )
        # A round of its own: the feed also gets retained scores other tests left on the
        # broker (the retained table is shared), and must not price one of those first.
        match = fixture(1, 2 * random.randrange(1_000, 100_000))
        score = {"match": match.id, "home": 0, "away": 2, "minute": 61, "status": "LIVE"}
        expected_price = None
        found: list = []
        for _ in range(100):  # the feed subscribes once connected: publish until it prices
            assert await board.publish(f"stadium/{match.id}/score", json.dumps(score), qos=1) == 0
            await asyncio.sleep(0.1)
            found = [
                r
                for r in await read_topic(kafka_bootstrap, f"odds-{suffix}")
                if r.key == match.id.encode()
            ]
            if found:
                break
        assert found, "no OddsCo price reached the odds topic"
        record = json.loads(found[0].value)
        expected_price = oddsco_price(score, 0, 1)
        assert expected_price is not None
        assert found[0].key == match.id.encode()
        assert set(record) == {"match", "odds", "minute", "at", "provider"}
        assert (record["match"], record["minute"], record["provider"]) == (match.id, 61, "oddsco")
        assert record["odds"] == {
            "home": 100.0 / expected_price["home_pct"],
            "away": 100.0 / expected_price["away_pct"],
        }
        headers = dict(found[0].headers)
        assert headers["edgebridge-route"] == b"odds-oddsco"
        assert headers["edgebridge-source-schema"] == b"oddsco-price.json"
        assert headers["edgebridge-schema"] == b"odds.json"
        assert headers["edgebridge-transform"] == b"1.0.0"

        # 100 / 0.05 = 2000: odds no book offers; the canonical schema refuses the result.
        before = len(await read_topic(kafka_bootstrap, f"odds-{suffix}"))
        await provider.connect(
            auth=("rogue", mint_token(config.guard_settings, "rogue", ["odds-provider"]))
        )
        bad = {**expected_price, "home_pct": 0.05, "ts_ms": 1}
        assert (
            await provider.publish(f"providers/oddsco/{match.id}", json.dumps(bad), qos=1) == 0x83
        )
        [letter] = await read_topic(kafka_bootstrap, f"odds-refused-{suffix}")
        assert json.loads(letter.value) == bad
        assert dict(letter.headers)["edgebridge-dlq-reason"] == b"transform"
        after = [r for r in await read_topic(kafka_bootstrap, f"odds-{suffix}")]
        assert all(json.loads(r.value)["odds"]["home"] < 1000 for r in after[before:])
        assert not any(json.loads(r.value).get("at") == 0.001 for r in after)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await board.close()
        await provider.close()
        await bridge.stop()
