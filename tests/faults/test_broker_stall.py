"""A broker that stops answering (connections open, requests unanswered) gets every producer a
clear answer within the producer's timeout: HTTP 503 with Retry-After, never a hung request.

The produce path answers from Kafka's acknowledgement through callbacks (no task or timer per
request); the batcher fails a batch Kafka did not acknowledge in time (bridge/kafka/
batch_producer.py), and an idempotent request's key stays pending rather than free while the
record may still land.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from kafka_faults import FaultyKafka, StallingProxy

pytestmark = pytest.mark.broker

TIMEOUT_S = 5.0  # request_timeout_ms of tests/support/harness.py


def routes(topic: str) -> str:
    return f"""
[[routes]]
name = "stake"
topic = "{topic}"
key = "{{$body.user}}"

[[routes.http]]
method = "POST"
path = "/stakes"
idempotency = "optional"
"""


@pytest.fixture
async def stalling_kafka() -> AsyncIterator[FaultyKafka]:
    kafka = await FaultyKafka(proxy=StallingProxy()).start()
    yield kafka
    await kafka.stop()


@pytest.mark.timeout(120)
async def test_a_stalled_broker_gets_503_within_the_timeout_then_recovers(
    stalling_kafka: FaultyKafka,
) -> None:
    topic = f"stall-{uuid.uuid4().hex[:8]}"
    bridge = await stalling_kafka.start_bridge(routes(topic), ["http"])
    proxy = stalling_kafka.proxy
    assert isinstance(proxy, StallingProxy)
    try:
        assert bridge.web is not None
        url = f"http://127.0.0.1:{bridge.web.port}/stakes"
        body = b'{"user": "u1", "amount": 5}'
        headers = {"content-type": "application/json"}
        async with httpx.AsyncClient(timeout=60) as client:
            assert (await client.post(url, content=body, headers=headers)).status_code == 202
            proxy.stalled = True
            key = {"idempotency-key": uuid.uuid4().hex}
            started = time.monotonic()
            plain, keyed = await asyncio.gather(
                client.post(url, content=body, headers=headers),
                client.post(url, content=body, headers={**headers, **key}),
            )
            waited = time.monotonic() - started
            for response in (plain, keyed):
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/problem+json"
                assert response.headers["retry-after"]
            # Bounded by the producer's timeout (the batch of the claim or the record), not hung.
            print(f"stalled: answered in {waited:.2f} s")
            assert waited < TIMEOUT_S + 3, waited
            # While Kafka may still store that record, its key is not free: 409, not a 2nd try.
            again = await client.post(url, content=body, headers={**headers, **key})
            assert again.status_code in (409, 503), again.text
            proxy.stalled = False
            proxy.kill_all()  # the stalled connections: the client reconnects
            for _ in range(60):
                response = await client.post(url, content=body, headers=headers)
                if response.status_code == 202:
                    break
                await asyncio.sleep(0.5)
            assert response.status_code == 202, response.text
    finally:
        await bridge.stop()
