"""The odds engine and the bet processor as real Kafka clients of the real embedded broker:
records in, records and replies out, duplicates dropped even across a restart."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from demo import kafka_io, odds_engine
from demo.bet_processor import (
    CORRELATION_HEADER,
    REPLY_TO_HEADER,
    STATUS_HEADER,
    BetProcessor,
    Topics,
)
from demo.book import STARTING_BALANCE
from demo.fixtures import fixture

WAIT_S = 60.0  # an upper bound for a shared, noisy machine, not a performance claim


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await client.start()
    yield client
    await client.stop()


async def send(
    producer: AIOKafkaProducer, topic: str, key: str, value: Any, **headers: str
) -> None:
    await producer.send_and_wait(
        topic,
        json.dumps(value).encode(),
        key=key.encode(),
        headers=[(name, v.encode()) for name, v in headers.items()],
    )


async def records_until(bootstrap: str, topic: str, done: Callable[[list[Any]], bool]) -> list[Any]:
    """Re-read ``topic`` until ``done(records)``; fail if it never is."""
    deadline = time.monotonic() + WAIT_S
    while True:
        records = await kafka_io.read_to_end(bootstrap, "test-reader", [topic])
        if done(records):
            return records
        assert time.monotonic() < deadline, f"{topic}: {[r.value for r in records]}"
        await asyncio.sleep(0.2)


def values(records: list[Any]) -> list[Any]:
    return [kafka_io.decode(r) for r in records]


async def test_the_odds_engine_prices_every_score(
    kafka_bootstrap: str, new_topic: Any, producer: AIOKafkaProducer
) -> None:
    topics = odds_engine.Topics(
        scores=await new_topic(),
        odds=await new_topic(),
        matches=await new_topic(),
        group=f"odds-{uuid.uuid4().hex[:6]}",
    )
    match = fixture(0, 0)
    stop = asyncio.Event()
    engine = asyncio.create_task(odds_engine.run(kafka_bootstrap, stop, topics))
    try:
        for minute, home in ((1, 0), (2, 1)):
            score = {"match": match.id, "home": home, "away": 0, "minute": minute, "status": "LIVE"}
            await send(producer, topics.scores, match.id, score)
        await send(producer, topics.scores, "junk", {"match": "not-a-fixture", "home": 0})
        matches = await records_until(kafka_bootstrap, topics.matches, lambda r: len(r) >= 2)
        odds = await records_until(kafka_bootstrap, topics.odds, lambda r: len(r) >= 2)
    finally:
        stop.set()
        await engine
    before, after = values(matches)
    assert [r.key for r in matches] == [match.id.encode()] * 2
    assert (before["home"], before["away"]) == (match.home, match.away)
    assert after["score"] == {"home": 1, "away": 0} and after["minute"] == 2
    assert after["odds"]["home"] < before["odds"]["home"]  # the home goal shortened home
    assert values(odds)[1]["odds"] == after["odds"]
    assert len(matches) == 2  # the junk score produced nothing


@pytest.fixture
async def bet_topics(new_topic: Any) -> Topics:
    return Topics(
        bets=await new_topic(partitions=3),
        matches=await new_topic(partitions=3, compact=True),
        verified=await new_topic(partitions=3),
        profiles=await new_topic(partitions=3, compact=True),
        group=f"bets-{uuid.uuid4().hex[:6]}",
    )


def match_record(match_id: str, status: str = "LIVE", home: int = 0, away: int = 0) -> dict:
    return {
        "id": match_id,
        "home": "Lions",
        "away": "Tigers",
        "status": status,
        "score": {"home": home, "away": away},
        "minute": 30,
        "odds": {"home": 1.5, "away": 2.6},
        "oddsAt": time.time(),
    }


async def test_the_bet_processor_answers_dedups_settles_and_survives_a_restart(
    kafka_bootstrap: str, new_topic: Any, producer: AIOKafkaProducer, bet_topics: Topics
) -> None:
    replies = await new_topic(partitions=3)
    topics = bet_topics

    async def place(key: str, correlation: str, **bet: Any) -> None:
        body = {"userId": "alice", "matchId": "m1", "team": "home", "amount": 100, **bet}
        await send(
            producer,
            topics.bets,
            key,
            body,
            **{CORRELATION_HEADER: correlation, REPLY_TO_HEADER: replies},
        )

    def reply_statuses(records: list[Any]) -> list[tuple[str | None, str | None]]:
        return [
            (kafka_io.header(r, CORRELATION_HEADER), kafka_io.header(r, STATUS_HEADER))
            for r in records
        ]

    async def run_processor() -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop = asyncio.Event()
        processor = BetProcessor(kafka_bootstrap, topics, users=["alice"])
        return stop, asyncio.create_task(processor.run(stop))

    await send(producer, topics.matches, "m1", match_record("m1"))
    stop, task = await run_processor()
    try:
        await place("alice", "c1", odds=1.5)
        await place("alice", "c1", odds=1.5)  # the same request again (an HTTP replay)
        await place("mallory", "c2")  # key = the caller's identity, body says alice
        await place("alice", "c3", odds=2.0)  # stale odds
        got = await records_until(kafka_bootstrap, replies, lambda r: len(r) >= 4)
        assert sorted(reply_statuses(got)) == [
            ("c1", "201"),
            ("c1", "201"),
            ("c2", "403"),
            ("c3", "409"),
        ]
        first, second = (
            json.loads(r.value) for r in got if kafka_io.header(r, CORRELATION_HEADER) == "c1"
        )
        assert first == second and first["potentialWinnings"] == 150.0
        profile = await records_until(
            kafka_bootstrap,
            topics.profiles,
            lambda r: any(v["balance"] == STARTING_BALANCE - 100 for v in values(r)),
        )
        assert values(profile)[0] == {"userId": "alice", "balance": STARTING_BALANCE}
        # The match ends 1-0: the bet is won and the balance credited.
        await send(producer, topics.matches, "m1", match_record("m1", "COMPLETED", 1, 0))
        verified = await records_until(
            kafka_bootstrap, topics.verified, lambda r: any(v["status"] == "WON" for v in values(r))
        )
        assert [(v["id"], v["status"]) for v in values(verified)] == [
            ("c1", "PENDING"),
            ("c1", "WON"),
        ]
        await records_until(
            kafka_bootstrap,
            topics.profiles,
            lambda r: values(r)[-1]["balance"] == STARTING_BALANCE - 100 + 150,
        )
    finally:
        stop.set()
        await task
    # A new processor rebuilds from Kafka: the replayed c1 is answered, not placed again.
    await send(producer, topics.matches, "m2", match_record("m2"))
    stop, task = await run_processor()
    try:
        await place("alice", "c1", odds=1.5)
        await place("alice", "c4", matchId="m2", amount=10_000)  # more than the balance
        got = await records_until(kafka_bootstrap, replies, lambda r: len(r) >= 6)
        # (Read back in partition order, not time order: compare them all.)
        assert sorted(reply_statuses(got)) == [
            ("c1", "201"),
            ("c1", "201"),
            ("c1", "201"),
            ("c2", "403"),
            ("c3", "409"),
            ("c4", "422"),
        ]
        refusal = next(r for r in got if kafka_io.header(r, CORRELATION_HEADER) == "c4")
        assert json.loads(refusal.value)["title"] == "insufficient-balance"
        verified = await kafka_io.read_to_end(kafka_bootstrap, "test-reader", [topics.verified])
        assert len(verified) == 2
    finally:
        stop.set()
        await task
