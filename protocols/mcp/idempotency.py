"""Idempotency keys on MCP publish tools: the mapping onto the protocol-neutral ledger
(``bridge/edge/idempotency.py``, the one HTTP uses), so an agent that retries a publish after a
lost answer gets the guarantees an app gets: the stored first result again (``replayed: true``),
``idempotency-in-flight`` while the first call is still being processed (retry later),
``idempotency-key-reused`` for another record under the same key, and never a second record,
on any instance and after a restart.

The outcome stored in the ledger is the tool result document as JSON bytes. The key of another
instance is decided by that instance: the call is forwarded to it over MCP (Streamable HTTP at
its advertised address, with the caller's own bearer token, so the owner authenticates and
authorizes it again), marked with :data:`FORWARDED_HEADER` so it is never forwarded twice.

MCP has its own ledger topic (``mcp_idempotency_topic``, default ``edgebridge.mcp-ledger``):
the HTTP front-end owns the store of ``edgebridge.ledger`` and no front-end reaches into
another, and a key sent over MCP and the same key over HTTP are different requests anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bridge.edge.idempotency import (
    CLAIM_HEADER,
    IdempotencyStore,
    InFlight,
    LedgerUnavailable,
    OtherRequest,
    Remote,
    decide,
)
from bridge.model.config import TopicSpec
from bridge.model.errors import KafkaUnavailable
from bridge.model.message import Message

log = structlog.get_logger(__name__)

DEFAULT_LEDGER_TOPIC = "edgebridge.mcp-ledger"
DEFAULT_PARTITIONS = 12
DEFAULT_TTL_S = 24 * 3600.0
FORWARDED_HEADER = "edgebridge-forwarded-by"
STDIO_ADDRESS_PREFIX = "stdio:"  # a stdio process has no address another instance can reach


class LedgerRefusal(Exception):
    """A verdict of the ledger, for the tool layer to turn into a tool error."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def ledger_topic_spec(topic: str, ttl_s: float = DEFAULT_TTL_S) -> TopicSpec:
    # compact: the newest state per key; delete: records older than the TTL decide nothing.
    config = {"cleanup.policy": "compact,delete", "retention.ms": str(int((ttl_s + 3600) * 1000))}
    return TopicSpec(topic, DEFAULT_PARTITIONS, 1, True, config)


def rebuild(record: Message, recipe: str) -> bytes:
    """The result a claim's record stands for when its owner died before storing it (``recipe``
    is the product's name)."""
    assert record.partition is not None and record.offset is not None
    return encode_outcome(published_document(recipe, record.key, record.partition, record.offset))


def published_document(
    product: str, key: bytes | None, partition: int, offset: int
) -> dict[str, Any]:
    """A publish tool's result."""
    return {
        "product": product,
        "published": True,
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "partition": partition,
        "offset": offset,
    }


def encode_outcome(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def replayed(outcome: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(outcome)
    document["replayed"] = True
    return document


# Forward a call to the owner at ``address``: (result document, is_error).
Forward = Callable[[str], Awaitable[tuple[dict[str, Any], bool]]]


class McpLedger:
    """The ledger as MCP publish tools use it: at most one record per scoped key."""

    def __init__(self, store: IdempotencyStore, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._joining: asyncio.Task[None] | None = None
        # Per topic and partition, the offset after the last record acknowledged here: a claim's
        # hint (its record will be at or after it), where a recovery starts searching.
        self._acked: dict[str, dict[int, int]] = {}

    async def ready(self) -> None:
        """Join the ledger's group on the first keyed call, not at start: most bridges never
        get one, and a join costs every start about half the group's session timeout. Until an
        instance joins, the others own every key, so deciding stays with exactly one owner."""
        if self._joining is None:
            self._joining = asyncio.ensure_future(self.store.start())
        try:
            await asyncio.shield(self._joining)
        except Exception as exc:
            self._joining = None  # the next call tries again
            log.warning("mcp.ledger_unavailable", error=repr(exc))
            raise LedgerRefusal(
                "ledger-rebalancing", "the idempotency ledger is not reachable now; retry"
            ) from exc

    async def stop(self) -> None:
        if self._joining is not None:
            with contextlib.suppress(Exception):
                await self._joining
            await self.store.stop()

    async def once(
        self,
        scoped: bytes,
        fp: str,
        product: str,
        message: Message,
        produce: Callable[[Message], Awaitable[dict[str, Any]]],
        forward: Forward | None,
    ) -> tuple[dict[str, Any], bool]:
        """The result of the call with key ``scoped``: produced now (``produce`` gets the
        message with its claim header), replayed, or forwarded to the key's owner. Returns
        (document, is_error); raises :class:`LedgerRefusal` for in-flight, reused and moving."""
        await self.ready()
        try:
            where = await self.store.locate(scoped)
        except LedgerUnavailable as exc:
            raise LedgerRefusal("ledger-rebalancing", f"{exc}; retry in a second") from exc
        if isinstance(where, Remote):
            if forward is None or where.address.startswith(STDIO_ADDRESS_PREFIX):
                raise LedgerRefusal(
                    "ledger-rebalancing",
                    "this idempotency key is decided by another instance that cannot be "
                    "reached now; retry in a second",
                )
            return await forward(where.address)
        if where.entry is not None:
            try:
                return replayed(decide(where.entry, fp)), False
            except OtherRequest as exc:
                raise LedgerRefusal(
                    "idempotency-key-reused",
                    "this idempotency_key was used for a different record; use a new key for "
                    "a new record",
                ) from exc
            except InFlight as exc:
                raise LedgerRefusal(
                    "idempotency-in-flight",
                    "a call with this idempotency_key is still being processed; retry later "
                    "(in a second) to get its result",
                ) from exc
        hints = dict(self._acked.get(message.topic, {}))
        try:
            claimed = await self.store.claim(where, scoped, fp, message.topic, hints, product)
        except KafkaUnavailable as exc:
            raise LedgerRefusal("kafka-unavailable", "Kafka did not acknowledge; retry") from exc
        tagged = dataclasses.replace(
            message, headers=(*message.headers, (CLAIM_HEADER, claimed.claim.hex().encode()))
        )

        async def work() -> dict[str, Any]:
            try:
                document = await produce(tagged)
            except KafkaUnavailable:
                # Kafka may still store the record: the key stays pending until a search of
                # the topic says whether it did.
                self.store.unknown_outcome(claimed)
                raise
            except BaseException:
                self.store.release(claimed)
                raise
            seen = self._acked.setdefault(message.topic, {})
            partition, offset = int(document["partition"]), int(document["offset"])
            seen[partition] = max(seen.get(partition, 0), offset + 1)
            self.store.complete(claimed, encode_outcome(document), self.ttl_s)
            return document

        # Runs to its end even if the caller goes: once a record may be in Kafka, only a
        # completion (or a new owner's recovery) may change the key's state.
        return await asyncio.shield(asyncio.ensure_future(work())), False


async def forward_call(
    address: str,
    path: str,
    tool: str,
    arguments: dict[str, Any],
    bearer: str | None,
    own_address: str,
    timeout_s: float,
) -> tuple[dict[str, Any], bool]:
    """One ``tools/call`` at the owner ``address`` over Streamable HTTP (the SDK's client)."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    headers = {FORWARDED_HEADER: own_address}
    if bearer:
        headers["authorization"] = f"Bearer {bearer}"
    try:
        async with asyncio.timeout(timeout_s):
            async with httpx2.AsyncClient(headers=headers, timeout=timeout_s) as http:
                async with streamable_http_client(f"http://{address}{path}", http_client=http) as (
                    read,
                    write,
                ):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        result = await session.call_tool(tool, arguments)
    except Exception as exc:  # the owner is away or moving: the agent retries
        log.warning("mcp.forward_failed", owner=address, error=repr(exc))
        raise LedgerRefusal(
            "ledger-rebalancing",
            "the instance that decides this idempotency key did not answer; retry in a second",
        ) from exc
    document: dict[str, Any] = json.loads(result.content[0].text)  # type: ignore[union-attr]
    return document, bool(result.is_error)
