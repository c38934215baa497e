"""A partner odds feed over gRPC: an odds provider that reads the house's odds and publishes its
own prices, as a partner service would, through ``edgebridge.v1.Bridge`` only.

It Subscribes to the ``odds`` route (snapshot, then live; it resumes with ``last-message-id``
after a broken connection, losing nothing) and Produces its price for each update to the
``partner-odds`` route with an ``idempotency-key`` of match and minute, so a retry after a lost
answer never writes a price twice (docs/grpc.md). It uses the generated messages of
``edgebridge.proto`` (what a partner compiles once) and a bearer token with the
``odds-partner`` role; nothing of the bridge's own code.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import structlog

from protocols.grpc import edgebridge_pb2 as pb

log = structlog.get_logger(__name__)

SERVICE = "/edgebridge.v1.Bridge/"
PARTNER = "acme-odds"
MARGIN = 0.97  # the partner prices a little shorter than the house
RETRY_S = 0.5


def partner_price(odds: dict[str, Any]) -> dict[str, Any] | None:
    """The partner's price for one house odds record (None while the market is closed)."""
    house = odds.get("odds")
    if not isinstance(house, dict):
        return None
    return {
        "match": str(odds["match"]),
        "home": round(max(1.01, float(house["home"]) * MARGIN), 2),
        "away": round(max(1.01, float(house["away"]) * MARGIN), 2),
        "minute": int(odds.get("minute", 0)),
        "partner": PARTNER,
    }


class PartnerFeed:
    def __init__(self, address: str, token: str | None) -> None:
        self.address = address
        self.token = token
        self.last_id: str | None = None  # where a new Subscribe resumes
        self.published = 0

    def _metadata(self, **extra: str) -> list[tuple[str, str]]:
        found = [(k, v) for k, v in extra.items()]
        if self.token:
            found.append(("authorization", f"Bearer {self.token}"))
        return found

    async def run(self, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            subscribe = channel.unary_stream(
                SERVICE + "Subscribe",
                request_serializer=pb.SubscribeRequest.SerializeToString,
                response_deserializer=pb.Event.FromString,
            )
            produce = channel.unary_unary(
                SERVICE + "Produce",
                request_serializer=pb.ProduceRequest.SerializeToString,
                response_deserializer=pb.ProduceReply.FromString,
            )
            resume = {"last-message-id": self.last_id} if self.last_id else {}
            call = subscribe(
                pb.SubscribeRequest(route="odds"),
                metadata=[(k, v) for k, v in resume.items()],
                wait_for_ready=True,
            )
            stopping = asyncio.ensure_future(stop.wait())
            log.info("partner_feed.started", address=self.address, resumed=bool(self.last_id))
            try:
                while not stop.is_set():
                    reading = asyncio.ensure_future(call.read())
                    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not reading.done():
                        reading.cancel()
                        break
                    event = reading.result()
                    if not isinstance(event, pb.Event):
                        return  # EOF: the bridge ended the stream; the supervisor starts us again
                    if event.id:
                        self.last_id = event.id
                    if event.kind in (pb.Event.RECORD, pb.Event.SNAPSHOT):
                        await self._publish(produce, event, stop)
            finally:
                stopping.cancel()
                call.cancel()

    async def _publish(
        self, produce: grpc.aio.UnaryUnaryMultiCallable, event: pb.Event, stop: asyncio.Event
    ) -> None:
        try:
            price = partner_price(json.loads(event.value))
        except (ValueError, KeyError, TypeError):
            return
        if price is None:
            return
        request = pb.ProduceRequest(
            route="partner-odds", params={"match": price["match"]}, value=json.dumps(price).encode()
        )
        # One price per house record: its position names it, the same on every retry.
        key = f"{PARTNER}:{event.partition}:{event.offset}"
        metadata = self._metadata(**{"idempotency-key": key})
        while not stop.is_set():
            try:
                await produce(request, metadata=metadata, timeout=10)
                self.published += 1
                return
            except grpc.aio.AioRpcError as exc:
                # In flight, owner moving, Kafka away: retry with the same key (never twice).
                if exc.code() not in (
                    grpc.StatusCode.ABORTED,
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    log.warning("partner_feed.refused", code=exc.code().name, detail=exc.details())
                    return
                await asyncio.sleep(RETRY_S)
