"""Request-reply over Kafka: a test responder consumes the request topic and answers on the reply
topic; the bridge turns the reply into the HTTP response, or a 202 + Location to long-poll."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

BET = {"userId": "u9", "matchId": "m3", "team": "away", "amount": 12}


class Responder:
    """Answers each request with status 201 and a JSON body, after ``delay`` seconds."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.delay = 0.0
        self.requests: list = []
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            group_id=None,
            fetch_max_wait_ms=10,
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await consumer.start()
        await producer.start()
        try:
            async for record in consumer:
                self.requests.append(record)
                headers = dict(record.headers)
                await asyncio.sleep(self.delay)
                body = json.loads(record.value)
                reply = json.dumps(
                    {"betId": f"bet-{record.offset}", "amount": body["amount"]}
                ).encode()
                await producer.send_and_wait(
                    headers["reply-to"].decode(),
                    reply,
                    key=record.key,
                    headers=[
                        ("correlation-id", headers["correlation-id"]),
                        (":status", b"201"),
                        ("content-type", b"application/json"),
                        ("x-bet-state", b"pending"),
                    ],
                )
        finally:
            await consumer.stop()
            await producer.stop()


@pytest.fixture
async def responder(kafka_bootstrap, topics) -> AsyncIterator[Responder]:
    responder = Responder(kafka_bootstrap, topics["bets"])
    responder.task = asyncio.create_task(responder.run())
    yield responder
    responder.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await responder.task


def key() -> dict[str, str]:
    return {"idempotency-key": uuid.uuid4().hex}


async def test_sync_request_gets_the_reply_as_response(client, responder) -> None:
    response = await client.post("/bets", json=BET, headers=key())
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-bet-state"] == "pending"
    assert response.json()["amount"] == 12
    [request] = responder.requests
    headers = dict(request.headers)
    assert headers["reply-to"].decode().startswith("replies-")
    assert headers["correlation-id"]
    assert request.key == b"u9"


async def test_sync_reply_is_stored_and_replayed(client, responder, topics, read_all) -> None:
    headers = key()
    first = await client.post("/bets", json=BET, headers=headers)
    retry = await client.post("/bets", json=BET, headers=headers)
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()
    assert retry.headers["x-bet-state"] == "pending"
    assert len(await read_all(topics["bets"])) == 1
    assert len(responder.requests) == 1


async def test_respond_async_gives_location_that_long_polls_for_the_reply(
    client, responder
) -> None:
    responder.delay = 0.5
    response = await client.post("/bets", json=BET, headers={**key(), "prefer": "respond-async"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "respond-async"
    location = response.headers["location"]
    polled = await client.get(location, headers={"prefer": "wait=8"})
    assert polled.status_code == 201
    assert polled.json()["amount"] == 12
    # The reply stays readable at its location (from the topic, not from memory of a waiter).
    again = await client.get(location)
    assert again.status_code == 201
    assert again.json() == polled.json()


async def test_reply_wait_timeout_gives_202_then_poll_without_wait_is_202(client, topics) -> None:
    # No responder: the wait ends, the client gets a Location; polling without wait says pending.
    response = await client.post("/bets", json=BET, headers={**key(), "prefer": "wait=0.3"})
    assert response.status_code == 202
    polled = await client.get(response.headers["location"])
    assert polled.status_code == 202
    assert polled.headers["location"] == response.headers["location"]


async def test_tampered_location_is_404(client) -> None:
    response = await client.post("/bets", json=BET, headers={**key(), "prefer": "respond-async"})
    location = response.headers["location"]
    other = location.replace("/bet/", "/bet/x")
    assert (await client.get(other)).status_code == 404
    assert (await client.get("/_edgebridge/replies/nope/abc?after=AQ")).status_code == 404


async def test_a_location_from_before_the_reply_topic_was_recreated_is_410(
    client, topics, kafka_bootstrap
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    response = await client.post("/bets", json=BET, headers={**key(), "prefer": "wait=0.1"})
    assert response.status_code == 202
    location = response.headers["location"]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topics["replies"]])
        await admin.create_topics([NewTopic(topics["replies"], 2, 1)])
    finally:
        await admin.close()
    for _ in range(100):  # the hub notices the new incarnation within a few seconds
        gone = await client.get(location)
        if gone.status_code != 202:
            break
        await asyncio.sleep(0.1)
    assert gone.status_code == 410
    assert gone.json()["type"].endswith("reply-location-gone")
