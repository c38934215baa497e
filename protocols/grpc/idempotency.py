"""The ``idempotency-key`` metadata over gRPC: the mapping onto the protocol-neutral ledger.

The ledger (claims, completions, replay, ownership, recovery) is ``bridge/edge/idempotency.py``,
the same core HTTP uses; the gRPC front-end keeps a ledger of its own (``[listeners.grpc]
idempotency_topic``, default ``edgebridge.ledger.grpc``) because the owner of a key is reached
by its *gRPC* address. Here:

- the outcome bytes are the serialized reply message of the method (``ProduceReply`` or a
  bound method's own reply type); the claim's recipe names the method, so a new owner that
  finds an orphaned claim's record rebuilds the same reply (:func:`rebuild`);
- the verdicts as statuses: a replay returns the stored reply with trailing metadata
  ``idempotent-replayed: true``; a key still in flight is ``ABORTED`` with a
  ``google.rpc.RetryInfo`` (gRPC's code for "a concurrency conflict, retry the sequence");
  the key used with another request is ``FAILED_PRECONDITION`` (the call is only wrong
  because of what the ledger holds, not by itself, which is what separates it from
  ``INVALID_ARGUMENT``); a ledger being rebalanced is ``UNAVAILABLE`` with RetryInfo;
- forwarding: a call whose key another instance owns is re-sent, as it came (method, request
  bytes, metadata), to the owner's gRPC port with ``edgebridge-forwarded-by`` naming this
  instance; the owner's reply, status, details and trailers go back unchanged. A forwarded call
  is never forwarded again (ownership is moving: ``UNAVAILABLE`` + RetryInfo).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import grpc
import structlog
from google.protobuf.message import Message as Message_

from bridge.edge.idempotency import Entry, InFlight, OtherRequest, decide
from bridge.model.message import Message
from bridge.model.request_reply import CORRELATION_HEADER
from protocols.grpc.status import Refusal

log = structlog.get_logger(__name__)

KEY_METADATA = "idempotency-key"
REPLAYED_METADATA = "idempotent-replayed"
FORWARDED_METADATA = "edgebridge-forwarded-by"
RETRY_S = 1.0
# Metadata a forward must not copy: the transport's own (grpcio sets them again).
_NOT_FORWARDED = {"user-agent", "content-type", "te", "grpc-timeout", "grpc-accept-encoding"}


def verdict(entry: Entry, fp: str) -> bytes:
    """The stored reply bytes of a decided key, or the refusal a retry gets."""
    try:
        return decide(entry, fp)
    except OtherRequest as exc:
        raise Refusal(
            grpc.StatusCode.FAILED_PRECONDITION,
            "idempotency-key-reused",
            f"this {KEY_METADATA} was used for a different request; use a new key for a new one",
        ) from exc
    except InFlight as exc:
        raise Refusal(
            grpc.StatusCode.ABORTED,
            "idempotency-in-flight",
            f"a call with this {KEY_METADATA} is still being processed; retry shortly",
            retry_s=RETRY_S,
        ) from exc


def moving(detail: str) -> Refusal:
    """The key's owner is not known here (a rebalance) or is changing: retry shortly."""
    return Refusal(grpc.StatusCode.UNAVAILABLE, "idempotency-moving", detail, retry_s=RETRY_S)


def rebuild_with(
    replies: Mapping[str, type[Message_]],
) -> Callable[[Message, str], bytes]:
    """The ledger's ``rebuild``: an orphaned claim's record (found by a new owner) and its
    recipe (the method path) -> the reply that call would have had."""

    def rebuild(record: Message, recipe: str) -> bytes:
        reply_cls = replies.get(recipe)
        if reply_cls is None:  # a method no longer bound: the coordinates are still the answer
            log.warning("grpc.idempotency_unknown_method", method=recipe)
            return b""
        correlation = (record.header(CORRELATION_HEADER) or b"").decode(errors="replace")
        return fill_reply(
            reply_cls(), record.topic, record.partition or 0, record.offset or 0, correlation
        )

    return rebuild


def fill_reply(reply: Message_, topic: str, partition: int, offset: int, correlation: str) -> bytes:
    """``reply`` with the record's coordinates in the fields of those names it declares."""
    fields = reply.DESCRIPTOR.fields_by_name
    for name, value in (
        ("topic", topic),
        ("partition", partition),
        ("offset", offset),
        ("correlation_id", correlation),
    ):
        if name in fields:
            # A field of another type (or repeated) is left alone: the reply is the user's.
            try:
                setattr(reply, name, value)
            except (TypeError, ValueError, AttributeError):
                pass
    return reply.SerializeToString()


class Forwarder:
    """Calls to the owners of keys, one channel per owner (HTTP/2: no set-up once warm)."""

    def __init__(self, address: str, root_certificates: bytes | None = None) -> None:
        self.address = address  # ours, advertised: named in the forwarded metadata
        self.root_certificates = root_certificates
        self.channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, owner: str) -> grpc.aio.Channel:
        channel = self.channels.get(owner)
        if channel is None:
            if self.root_certificates is not None:
                # Instances share the listener's certificate: trust it for the hop.
                credentials = grpc.ssl_channel_credentials(self.root_certificates)
                channel = grpc.aio.secure_channel(owner, credentials)
            else:
                channel = grpc.aio.insecure_channel(owner)
            self.channels[owner] = channel
        return channel

    async def forward(
        self,
        owner: str,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str | bytes]],
        timeout: float,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        """The owner's reply bytes; its status (with details) raised on ``context``."""
        sent = [
            (k, v)
            for k, v in metadata
            if not k.startswith(":")
            and k.lower() not in _NOT_FORWARDED
            and k.lower() != FORWARDED_METADATA
        ]
        sent.append((FORWARDED_METADATA, self.address))
        stub: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel(owner).unary_unary(
            method  # no serializers: the request's and the reply's bytes pass as they are
        )
        call = stub(request, metadata=sent, timeout=timeout)
        try:
            reply: bytes = await call
        except grpc.aio.AioRpcError as exc:
            # The owner's own answer (or UNAVAILABLE when it cannot be reached: retry) as is.
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                log.warning("grpc.forward_unavailable", owner=owner, error=exc.details())
            trailers = tuple(exc.trailing_metadata() or ())  # abort() takes a tuple only
            await context.abort(exc.code(), exc.details() or "", trailers)
            raise AssertionError("unreachable") from None
        trailing = await call.trailing_metadata()
        if trailing:
            context.set_trailing_metadata(
                tuple((k, v) for k, v in trailing if k == REPLAYED_METADATA)
            )
        return reply

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        self.channels.clear()
