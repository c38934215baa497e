"""The bet processor: a Kafka client answering the bridge's request-reply bets.

Consumes ``bets`` (a consumer group, committed after answering), replies on the request's
``reply-to`` topic with the same ``correlation-id`` and a ``:status`` header, records verified
bets (``bets-verified``, keyed by user) and balances (``user-profiles``, compacted), and settles
bets when ``matches`` says a match is over. Decisions are :class:`demo.book.Book`'s.

On start it rebuilds its Book from ``user-profiles`` and ``bets-verified``: Kafka is the only
state, so a restarted processor still drops a duplicate it answered before the restart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from demo import kafka_io
from demo.book import Book, Outcome, Record

log = structlog.get_logger(__name__)

# The request-reply contract of the HTTP front-end (protocols/http/replies.py): copied, since a
# backend service is a plain Kafka client and must not import the bridge's protocol code.
CORRELATION_HEADER = "correlation-id"
REPLY_TO_HEADER = "reply-to"
STATUS_HEADER = ":status"


@dataclass(frozen=True, slots=True)
class Topics:
    bets: str = "bets"
    matches: str = "matches"
    verified: str = "bets-verified"
    profiles: str = "user-profiles"
    group: str = "bet-processor"  # consumer group answering bets


class BetProcessor:
    def __init__(
        self, bootstrap: str, topics: Topics = Topics(), users: Sequence[str] = ()
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.users = users  # accounts opened at start, so the page shows a balance at once
        self.book = Book(profiles_topic=topics.profiles, verified_topic=topics.verified)
        self.producer = kafka_io.producer(bootstrap, "bet-processor")

    async def run(self, stop: asyncio.Event) -> None:
        await self.producer.start()
        try:
            await self._rebuild()
            for user in self.users:
                opened = self.book.open_account(user)
                if opened is not None:
                    await self._write([opened])
            matches = asyncio.create_task(self._follow_matches(stop), name="bet-processor-matches")
            try:
                await self._answer_bets(stop)
            finally:
                matches.cancel()
                await asyncio.gather(matches, return_exceptions=True)
        finally:
            await self.producer.stop()

    async def _rebuild(self) -> None:
        """Balances and bets from what this processor wrote, then the matches as they are now
        (settling what ended while it was down), before any bet is answered."""
        topics = self.topics
        records = await kafka_io.read_to_end(
            self.bootstrap,
            "bet-processor-rebuild",
            [topics.profiles, topics.verified, topics.matches],
        )
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            value = kafka_io.decode(record)
            if isinstance(value, dict):
                by_topic.setdefault(record.topic, []).append(value)
        for profile in by_topic.get(topics.profiles, []):
            self.book.learn_profile(profile)
        for bet in by_topic.get(topics.verified, []):
            self.book.learn_bet(bet)
        for match in by_topic.get(topics.matches, []):
            await self._write(self.book.settle(match, time.time()))
        log.info("bet_processor.rebuilt", records=len(records), users=len(self.book.balances))

    async def _follow_matches(self, stop: asyncio.Event) -> None:
        consumer = kafka_io.consumer(self.bootstrap, "bet-processor-matches")
        await consumer.start()
        try:
            await kafka_io.assign_all(consumer, [self.topics.matches])
            await kafka_io.consume(consumer, stop, self._settle)
        finally:
            await consumer.stop()

    async def _settle(self, record: Any) -> None:
        match = kafka_io.decode(record)
        if isinstance(match, dict) and "id" in match:
            await self._write(self.book.settle(match, time.time()))

    async def _answer_bets(self, stop: asyncio.Event) -> None:
        consumer = kafka_io.consumer(
            self.bootstrap, "bet-processor", self.topics.group, self.topics.bets
        )
        await consumer.start()
        log.info("bet_processor.started")
        try:
            # Committed after answering: a crash replays the batch, and the Book drops what it
            # already answered (by correlation id), so nothing is placed twice.
            await kafka_io.consume(consumer, stop, self._answer, commit=True)
        finally:
            await consumer.stop()

    async def _answer(self, record: Any) -> None:
        correlation = kafka_io.header(record, CORRELATION_HEADER)
        reply_to = kafka_io.header(record, REPLY_TO_HEADER)
        bet = kafka_io.decode(record)
        if correlation is None or not isinstance(bet, dict):
            log.warning("bet_processor.unusable_request", offset=record.offset)
            return
        identity = record.key.decode() if record.key else None
        if identity is not None and bet.get("userId") != identity:
            outcome = self.book.refuse(
                correlation, 403, "not-your-account", "a bet's userId must be the caller's identity"
            )
        else:
            outcome = self.book.place(bet, correlation, time.time())
        if outcome.duplicate:
            log.info("bet_processor.duplicate", correlation=correlation)
        else:
            await self._write(outcome.records)
            log.info("bet_processor.answered", correlation=correlation, status=outcome.reply.status)
        if reply_to:
            await self._reply(reply_to, correlation, outcome)

    async def _reply(self, topic: str, correlation: str, outcome: Outcome) -> None:
        reply = outcome.reply
        await self.producer.send_and_wait(
            topic,
            json.dumps(reply.body, allow_nan=False).encode(),
            key=correlation.encode(),
            headers=[
                (CORRELATION_HEADER, correlation.encode()),
                (STATUS_HEADER, str(reply.status).encode()),
                ("content-type", reply.content_type.encode()),
            ],
        )

    async def _write(self, records: Sequence[Record]) -> None:
        for record in records:
            await self.producer.send_and_wait(
                record.topic, kafka_io.encode(record.value), key=record.key.encode()
            )
