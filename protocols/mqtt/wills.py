"""Will messages: published when a connection ends without a normal DISCONNECT.

MQTT 5 will delay: the will waits ``min(will delay, session expiry)`` seconds and is cancelled
if the client connects again in that time (on this instance, or on another one: its ownership
claim reaches every instance through the sessions table). A will goes through the same route,
access and schema checks as a PUBLISH of that client would.

Limitation (documented in docs/decisions.md): a delayed will lives in the memory of the
instance that held the connection; if that instance dies during the delay, the will is lost.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from bridge.errors import KafkaUnavailable

from .packets import Connect, Properties, Publish

if TYPE_CHECKING:
    from .client import Client, PublishRefused
    from .frontend import MqttFrontend

log = structlog.get_logger(__name__)


class Wills:
    def __init__(self, frontend: MqttFrontend) -> None:
        self.frontend = frontend
        self._pending: dict[str, tuple[asyncio.TimerHandle, str]] = {}

    def schedule(self, client: Client, connect: Connect) -> None:
        delay = connect.will_properties.will_delay_interval or 0
        if client.expiry is not None:
            delay = min(delay, client.expiry)
        if delay <= 0:
            self.frontend.spawn(self.publish(client, connect))
            return
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, self._fire, client, connect)
        self.cancel(client.client_id)
        self._pending[client.client_id] = (handle, client.nonce)

    def _fire(self, client: Client, connect: Connect) -> None:
        self._pending.pop(client.client_id, None)
        self.frontend.spawn(self.publish(client, connect))

    def cancel(self, client_id: str, unless_nonce: str | None = None) -> None:
        """The client is back (a new connection, ``unless_nonce`` being the one that left)."""
        pending = self._pending.get(client_id)
        if pending is None or pending[1] == unless_nonce:
            return
        pending[0].cancel()
        del self._pending[client_id]
        log.info("mqtt.will_cancelled", client_id=client_id)

    async def publish(self, client: Client, connect: Connect) -> None:
        from .client import PublishRefused

        assert connect.will_topic is not None
        props = connect.will_properties
        if props.will_delay_interval is not None:
            props = _without_delay(props)
        publish = Publish(
            connect.will_topic,
            connect.will_payload,
            connect.will_qos,
            connect.will_retain,
            False,
            None,
            props,
        )
        producer = self.frontend.bridge.producer
        assert producer is not None
        try:
            route, message = client.record_for(publish, connect.will_topic)
            await producer.send(message, route.acks or None)
            if publish.retain:
                await self.frontend.retained.store(connect.will_topic, publish, message.headers)
        except PublishRefused as exc:
            _refused(client, exc)
            return
        except KafkaUnavailable as exc:
            log.warning("mqtt.will_failed", client_id=client.client_id, error=str(exc))
            return
        log.info("mqtt.will_published", client_id=client.client_id, topic=connect.will_topic)

    def pending(self) -> int:
        return len(self._pending)


def _without_delay(props: Properties) -> Properties:
    from dataclasses import replace

    return replace(props, will_delay_interval=None)


def _refused(client: Client, exc: PublishRefused) -> None:
    log.warning(
        "mqtt.will_refused",
        client_id=client.client_id,
        reason_code=f"0x{exc.code:02X}",
        detail=exc.reason,
    )
