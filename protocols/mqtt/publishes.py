"""One connection's inbound PUBLISHes, from the packet to its acknowledgement.

PUBLISH handling only *enqueues* the records (:mod:`.ingest`); the acknowledgements (PUBACK /
PUBREC) are written in arrival order as Kafka acknowledges, so a client can keep many publishes
in flight and is never acknowledged before Kafka. A refusal is answered in the client's own
terms (a negative PUBACK on MQTT 5, a DISCONNECT where the spec asks for one, a close on 3.1.1).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

import structlog

from bridge.model.errors import KafkaUnavailable
from bridge.telemetry import metrics

from .delivery import Delivery, Flushable
from .ingest import Ingest, PublishRefused, Sender, done
from .sessions import SessionHolder, SessionManager
from .wire.connection import Connection
from .wire.packets import Publish, ReasonCode

log = structlog.get_logger(__name__)
PROTOCOL = "mqtt"


class Publisher(SessionHolder, Flushable, Protocol):
    """The connection publishing (:class:`protocols.mqtt.client.Client`)."""

    conn: Connection
    sender: Sender

    def close(self, linger: bool = False) -> None: ...


class Publishes:
    """The PUBLISH side of one connection, made at its CONNECT."""

    __slots__ = ("_acks", "client", "delivery", "ingest", "sessions")

    def __init__(
        self, client: Publisher, ingest: Ingest, sessions: SessionManager, delivery: Delivery
    ) -> None:
        self.client = client
        self.ingest = ingest
        self.sessions = sessions
        self.delivery = delivery
        self._acks: deque[list[Any]] | None = None  # [future, publish, code, reason], in order

    async def publish(self, publish: Publish, topic: str) -> None:
        client = self.client
        sender = client.sender
        try:
            made = sender.records(publish, topic)
        except PublishRefused as exc:
            await sender.refused(publish, topic, exc)
            self._refused(publish, topic, exc)
            return
        ingest = self.ingest
        route = made.route
        acks, linger_ms = ingest.acks(route, publish.qos)
        # One done-callback per record (counting, and answering when the answer may go as soon
        # as Kafka acknowledged): every callback is one more event-loop handle per publish.
        answer_now = publish.qos == 1 or (publish.qos == 2 and not client.persistent)
        on_done = ingest.counted(
            route, len(publish.payload), self.ack_ready if answer_now else None
        )
        try:
            future = ingest.submit_now(made, acks, linger_ms, on_done) or await ingest.submit(
                made.message, made.retained, acks, linger_ms, on_done
            )
        except KafkaUnavailable as exc:
            self._kafka_failed(publish, str(exc))
            return
        if publish.qos == 0:
            return
        if publish.qos == 2 and client.persistent:
            future = await self._remember_qos2(future, publish)
            self._queue_ack([future, publish])
            future.add_done_callback(self.ack_ready)
            return
        self._queue_ack([future, publish])

    def _queue_ack(self, entry: list[Any]) -> None:
        if self._acks is None:
            self._acks = deque()
        self._acks.append(entry)

    async def _remember_qos2(
        self, produced: asyncio.Future[Any], publish: Publish
    ) -> asyncio.Future[Any]:
        """Exactly once across reconnects: save "packet id produced" before the PUBREC.

        If the PUBREC is lost with the connection, the client re-sends the PUBLISH (DUP) to
        whichever instance it reaches; the resumed session knows the id and does not produce it
        again. (Slower: QoS 2 on a persistent session waits for Kafka twice, in order.)
        """
        try:
            await produced
        except Exception:
            return produced  # answered as a Kafka failure by ack_ready
        assert publish.packet_id is not None
        self.client.conn.awaiting_pubrel.add(publish.packet_id)
        await self.sessions.save(self.client)
        return done()

    def _refused(self, publish: Publish, topic: str, exc: PublishRefused) -> None:
        client = self.client
        log.warning(
            "mqtt.publish_refused",
            client_id=client.client_id,
            topic=topic,
            qos=publish.qos,
            reason_code=f"0x{exc.code:02X}",
            detail=exc.reason,
        )
        if exc.code in (ReasonCode.QOS_NOT_SUPPORTED, ReasonCode.RETAIN_NOT_SUPPORTED):
            client.kick(exc.code, exc.reason)  # MQTT 5 section 3.3.1: a DISCONNECT, not a PUBACK
        elif client.conn.version != 5:
            # MQTT 3.1.1 has no negative PUBACK; it allows closing the connection (section
            # 3.3.5), which is honest: a positive acknowledgement would claim Kafka has it.
            client.close()
        elif publish.qos:
            self._queue_ack([done(), publish, exc.code, exc.reason])
            self.ack_ready(None)

    def _kafka_failed(self, publish: Publish, detail: str) -> None:
        client = self.client
        log.warning("mqtt.kafka_unavailable", client_id=client.client_id, detail=detail)
        metrics.rejected(PROTOCOL, "kafka_unavailable")
        # Leave the publish unacknowledged and end the connection: a negative PUBACK would end
        # the QoS 1/2 exchange and clients (paho among them) would never send it again, while
        # an unacknowledged publish is re-sent after reconnecting. MQTT 5 clients hear why.
        if client.conn.version == 5:
            client.kick(ReasonCode.SERVER_BUSY, "Kafka did not acknowledge; publish again")
        else:
            client.close()

    def ack_ready(self, _future: Any) -> None:
        """Write the acknowledgements whose turn has come (arrival order)."""
        acks = self._acks
        if acks is None:
            return
        client = self.client
        while acks and acks[0][0].done():
            entry = acks.popleft()
            future, publish = entry[0], entry[1]
            code, reason = (entry[2], entry[3]) if len(entry) > 2 else (0, "")
            if not code and future.exception() is not None:
                self._kafka_failed(publish, repr(future.exception()))
                continue
            if publish.qos == 2 and not code and client.persistent:
                client.session_dirty = True  # the PUBREL will remove the id from the session
            client.conn.publish_done(publish, code, reason)
        if not acks:
            self._acks = None
        self.delivery.mark_dirty(client)  # one write for all acknowledgements of a Kafka batch
