"""Produce through the direct path (bridge/web/direct.py): a request whose head and body arrive
together is answered from Kafka's acknowledgement without ASGI. Raw sockets send each request
in one write (as wrk and most clients do for a small POST) or in two (head, then body: the ASGI
path), and the answers must be the same: status, problem documents, replays, records.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

STAKE_ROUTE = """
[[routes]]
name = "stake"
topic = "{topic}"
key = "{{$body.userId}}"
content_type = "application/json"
schema = "{schema}"
dead_letter = "{topic}-dead"

[routes.http]
method = "POST"
path = "/stakes"
idempotency = "required"
max_body_bytes = 256
"""

BET = {"userId": "u1", "matchId": "m1", "team": "home", "amount": 5}


@pytest.fixture
async def stake_bridge(bridge_factory, http_routes, topics, schema_file) -> Any:
    extra = STAKE_ROUTE.format(topic=topics["bets"], schema=schema_file)
    text = http_routes(topics["bets"], topics["replies"], topics["table"], schema_file, extra)
    return await bridge_factory(text, frontends=["http"])


class Raw:
    """One keep-alive connection, requests written whole (direct) or head-then-body (ASGI)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    @staticmethod
    def request(path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def send(self, raw: bytes, split: bool = False) -> None:
        if split:  # the head alone first: the server starts an ASGI exchange before the body
            head, _, body = raw.partition(b"\r\n\r\n")
            self.writer.write(head + b"\r\n\r\n")
            await self.writer.drain()
            await asyncio.sleep(0.05)
            raw = body
        self.writer.write(raw)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        headers = {
            k.strip().lower(): v.strip()
            for k, v in (line.split(":", 1) for line in lines[1:] if line)
        }
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def bet_request(key: str, bet: dict[str, Any] | None = None, path: str = "/stakes") -> bytes:
    body = json.dumps(bet or BET).encode()
    return Raw.request(path, body, {"Content-Type": "application/json", "Idempotency-Key": key})


@pytest.mark.parametrize("split", [False, True], ids=["direct", "asgi"])
async def test_an_idempotent_produce_answers_the_same_on_both_paths(
    stake_bridge, topics, read_all, split: bool
) -> None:
    web = stake_bridge.web
    taken = web.direct_taken
    raw = await Raw.open(web.port)
    key = uuid.uuid4().hex
    await raw.send(bet_request(key), split)
    status, headers, body = await raw.response()
    assert status == 202, body
    acked = json.loads(body)
    assert set(acked) == {"topic", "partition", "offset", "correlationId"}
    assert headers["correlation-id"] == acked["correlationId"]
    # the retry: the stored answer, replayed
    await raw.send(bet_request(key), split)
    status, headers, again = await raw.response()
    assert status == 202 and headers["idempotent-replayed"] == "true"
    assert json.loads(again) == acked
    # the same key, another body: 422
    await raw.send(bet_request(key, {**BET, "amount": 7}), split)
    status, headers, problem = await raw.response()
    assert status == 422 and headers["content-type"] == "application/problem+json"
    assert json.loads(problem)["type"].endswith("idempotency-key-reused")
    await raw.close()
    records = [r for r in await read_all(topics["bets"]) if r.key == b"u1"]
    assert [(r.partition, r.offset) for r in records] == [(acked["partition"], acked["offset"])]
    assert json.loads(records[0].value) == BET
    # which path answered: all three direct, or none
    assert web.direct_taken - taken == (0 if split else 3)


@pytest.mark.parametrize("split", [False, True], ids=["direct", "asgi"])
async def test_refusals_are_the_same_on_both_paths_and_produce_nothing(
    stake_bridge, topics, read_all, split: bool
) -> None:
    web = stake_bridge.web
    bad = {"userId": "u2", "matchId": "m1", "amount": float("inf")}
    cases = [
        # the schema: 400 with the pointer (and a dead letter)
        (bet_request(uuid.uuid4().hex, {**BET, "userId": "u2", "amount": -3}), 400, "/amount"),
        # money that is not a finite number
        (
            Raw.request(
                "/stakes",
                json.dumps(bad).encode(),
                {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex},
            ),
            400,
            "/amount",
        ),
        # the media type
        (Raw.request("/stakes", b"{}", {"Idempotency-Key": "k"}), 415, None),
        # no key on a route that requires one
        (Raw.request("/stakes", b"{}", {"Content-Type": "application/json"}), 400, None),
        # a body over the route's limit
        (bet_request(uuid.uuid4().hex, {**BET, "userId": "u2" * 200}), 413, None),
    ]
    for request, expected, pointer in cases:
        # A connection each: on the ASGI path a refusal from the head alone closes it (the
        # body still coming cannot be told from a next request).
        raw = await Raw.open(web.port)
        await raw.send(request, split)
        status, headers, body = await raw.response()
        await raw.close()
        assert status == expected, body
        assert headers["content-type"] == "application/problem+json"
        if pointer:
            assert pointer in {e["pointer"] for e in json.loads(body)["errors"]}
    assert [r for r in await read_all(topics["bets"]) if r.key == b"u2"] == []
    dead = await read_all(f"{topics['bets']}-dead")
    assert len(dead) == 2  # the two payloads the schema refused


async def test_pipelined_direct_produces_and_a_fetch_answer_in_order(
    stake_bridge, topics, read_all
) -> None:
    web = stake_bridge.web
    raw = await Raw.open(web.port)
    keys = [uuid.uuid4().hex for _ in range(3)]
    bets = [{**BET, "userId": f"p{i}", "amount": i + 1} for i in range(3)]
    await raw.send(
        bet_request(keys[0], bets[0])
        + Raw.request("/profiles/nobody", b"", {"Accept": "application/json"}, "GET")
        + bet_request(keys[1], bets[1])
        + bet_request(keys[2], bets[2])
    )
    answers = [await raw.response() for _ in range(4)]
    await raw.close()
    assert [status for status, _, _ in answers] == [202, 404, 202, 202]
    offsets = [json.loads(answers[i][2]) for i in (0, 2, 3)]
    records = {r.key: r for r in await read_all(topics["bets"])}
    for bet, acked in zip(bets, offsets, strict=True):
        record = records[bet["userId"].encode()]
        assert (record.partition, record.offset) == (acked["partition"], acked["offset"])


async def test_a_client_gone_before_the_acknowledgement_still_gets_one_record(
    stake_bridge, topics, read_all
) -> None:
    """The claim's work runs to its end: a retry on a new connection replays it."""
    web = stake_bridge.web
    key = uuid.uuid4().hex
    bet = {**BET, "userId": "gone"}
    raw = await Raw.open(web.port)
    await raw.send(bet_request(key, bet))
    await raw.close()  # at once: before Kafka acknowledged
    raw = await Raw.open(web.port)
    for _ in range(50):
        await raw.send(bet_request(key, bet))
        status, headers, _ = await raw.response()
        if status != 409:  # in flight a moment longer
            break
        await asyncio.sleep(0.1)
    await raw.close()
    assert status == 202 and headers["idempotent-replayed"] == "true"
    assert len([r for r in await read_all(topics["bets"]) if r.key == b"gone"]) == 1


async def test_a_cancelled_asgi_waiter_leaves_its_produce_settled(
    stake_bridge, topics, read_all, caplog
) -> None:
    """Hypercorn (``http2 = true``) cancels an app whose client left. A produce whose waiter is
    cancelled after its key was claimed still reaches Kafka, completes the ledger (a retry
    replays it) and raises nothing in the acknowledgement's callbacks."""
    http = stake_bridge.frontend("http")
    key = uuid.uuid4().hex
    bet = {**BET, "userId": "cancelled"}
    body = json.dumps(bet).encode()
    delivered = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not delivered.is_set():
            delivered.set()
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client says nothing more
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"a cancelled request answered: {message}")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/stakes",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"idempotency-key", key.encode())],
        "client": ("127.0.0.1", 40000),
    }
    task = asyncio.create_task(http(scope, receive, send))
    await delivered.wait()
    for _ in range(3):  # the handler runs on from the body to the claim without awaiting
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    raw = await Raw.open(stake_bridge.web.port)
    for _ in range(50):
        await raw.send(bet_request(key, bet))
        status, headers, _ = await raw.response()
        if status != 409:  # still in flight a moment longer
            break
        await asyncio.sleep(0.1)
    await raw.close()
    assert status == 202 and headers["idempotent-replayed"] == "true"
    assert len([r for r in await read_all(topics["bets"]) if r.key == b"cancelled"]) == 1
    assert not [
        r for r in caplog.records if "InvalidStateError" in r.getMessage() + str(r.exc_info)
    ]
