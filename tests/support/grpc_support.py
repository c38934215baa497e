"""Shared pieces of the gRPC front-end tests: calling edgebridge.v1.Bridge with a real grpcio
client (the generated message classes, no stubs: the method paths are the wire contract)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import grpc

from protocols.grpc import edgebridge_pb2 as pb

SERVICE = "/edgebridge.v1.Bridge/"


class BridgeClient:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._produce = channel.unary_unary(
            SERVICE + "Produce",
            request_serializer=pb.ProduceRequest.SerializeToString,
            response_deserializer=pb.ProduceReply.FromString,
        )
        self._request = channel.unary_unary(
            SERVICE + "Request",
            request_serializer=pb.ProduceRequest.SerializeToString,
            response_deserializer=pb.Reply.FromString,
        )
        self._subscribe = channel.unary_stream(
            SERVICE + "Subscribe",
            request_serializer=pb.SubscribeRequest.SerializeToString,
            response_deserializer=pb.Event.FromString,
        )

    @staticmethod
    def metadata(token: str | None = None, **extra: str) -> Sequence[tuple[str, str]]:
        found = [(k.replace("_", "-"), v) for k, v in extra.items()]
        if token is not None:
            found.append(("authorization", f"Bearer {token}"))
        return found

    async def produce(
        self,
        route: str,
        value: bytes | None,
        params: Mapping[str, str] | None = None,
        token: str | None = None,
        timeout: float = 10,
    ) -> pb.ProduceReply:
        request = pb.ProduceRequest(
            route=route, params=dict(params or {}), value=value or b"", tombstone=value is None
        )
        return await self._produce(request, metadata=self.metadata(token), timeout=timeout)

    async def request(
        self,
        route: str,
        value: bytes,
        params: Mapping[str, str] | None = None,
        token: str | None = None,
        timeout: float = 10,
    ) -> pb.Reply:
        request = pb.ProduceRequest(route=route, params=dict(params or {}), value=value)
        return await self._request(request, metadata=self.metadata(token), timeout=timeout)

    def subscribe(
        self,
        route: str,
        params: Mapping[str, str] | None = None,
        start: str = "",
        last_id: str | None = None,
        token: str | None = None,
    ) -> grpc.aio.UnaryStreamCall:
        extra = {"last_message_id": last_id} if last_id else {}
        return self._subscribe(
            pb.SubscribeRequest(route=route, params=dict(params or {}), start=start),
            metadata=self.metadata(token, **extra),
        )


async def events(call: grpc.aio.UnaryStreamCall) -> AsyncIterator[pb.Event]:
    """Every event of a Subscribe call, through ``read()`` (so a test may also read singly)."""
    while True:
        event = await call.read()
        if event is grpc.aio.EOF:
            return
        yield event


async def records(call: grpc.aio.UnaryStreamCall, count: int) -> list[pb.Event]:
    """The next ``count`` RECORD events of a Subscribe call (markers skipped)."""
    found: list[pb.Event] = []
    async for event in events(call):
        if event.kind == pb.Event.RECORD:
            found.append(event)
            if len(found) >= count:
                break
    return found
