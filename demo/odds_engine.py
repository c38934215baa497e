"""The odds engine: a Kafka client that turns every score into new odds and a match record.

Consumes ``scores`` (written by the bridge from the scoreboards' MQTT publishes), produces
``odds`` (one record per match, compacted: what MQTT apps subscribe to at ``odds/{match}``) and
``matches`` (one record per match with teams, status, score and current odds: what the page
draws and what the bet processor prices bets against).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from demo import kafka_io
from demo.fixtures import fixture_by_id
from demo.odds import odds

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Topics:
    scores: str = "scores"
    odds: str = "odds"
    matches: str = "matches"
    group: str = "odds-engine"


def priced(score: Mapping[str, Any], now: float) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(odds record, match record) for a score report; None if the match is not a demo fixture."""
    fixture = fixture_by_id(str(score.get("match")))
    if fixture is None:
        return None
    home, away, minute = int(score["home"]), int(score["away"]), int(score["minute"])
    status = str(score.get("status", "LIVE"))
    current = odds(home, away, minute, fixture.home_strength, fixture.away_strength)
    open_market = status in ("SCHEDULED", "LIVE")
    odds_value = {"home": current.home, "away": current.away} if open_market else None
    odds_record = {"match": fixture.id, "odds": odds_value, "minute": minute, "at": now}
    match_record = {
        "id": fixture.id,
        "home": fixture.home,
        "away": fixture.away,
        "status": status,
        "score": {"home": home, "away": away},
        "minute": minute,
        "odds": odds_value,
        "oddsAt": now,
    }
    return odds_record, match_record


async def run(bootstrap: str, stop: asyncio.Event, topics: Topics = Topics()) -> None:
    consumer = kafka_io.consumer(bootstrap, "odds-engine", topics.group, topics.scores)
    producer = kafka_io.producer(bootstrap, "odds-engine")
    await producer.start()
    await consumer.start()
    log.info("odds_engine.started")
    try:
        await kafka_io.consume(
            consumer, stop, lambda record: _price(producer, record, topics), commit=True
        )
    finally:
        await consumer.stop()
        await producer.stop()


async def _price(producer: Any, record: Any, topics: Topics) -> None:
    score = kafka_io.decode(record)
    result = priced(score, time.time()) if isinstance(score, dict) else None
    if result is None:
        log.warning("odds_engine.unknown_score", offset=record.offset, key=record.key)
        return
    odds_record, match_record = result
    key = match_record["id"].encode()
    # Odds first: a page that sees the match record can rely on the odds topic having them.
    await producer.send_and_wait(topics.odds, kafka_io.encode(odds_record), key=key)
    await producer.send_and_wait(topics.matches, kafka_io.encode(match_record), key=key)
