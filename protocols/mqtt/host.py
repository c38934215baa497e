"""What a connection needs of the front-end it lives in, and of the pipe it sits on.

:class:`ClientHost` is the back-reference of :class:`protocols.mqtt.client.Client` to
:class:`protocols.mqtt.frontend.MqttFrontend`: its parts (guard, ingest, delivery, sessions,
wills, retained messages), the registry and the hub feeds of subscriptions. It is generic in the
connection type, so this module (and the client) need not import the front-end nor the front-end's
protocol the client: no import cycle.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar, runtime_checkable

from bridge.edge.guard import Guard
from bridge.model.routing import RouteTable

from .delivery import Delivery
from .ingest import Ingest
from .options import MqttOptions
from .retained import RetainedMessages
from .sessions import SessionManager
from .subscriptions import Subscription
from .wills import Wills
from .wire.connection import Limits

C = TypeVar("C", contravariant=True)


class Transport(Protocol):
    """TCP/TLS (an asyncio transport) or a WebSocket adapted to it (transport.py)."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


@runtime_checkable
class LingeringTransport(Transport, Protocol):
    """A transport that closes on its own terms after the server said why (a WebSocket:
    close frame with a code fitting the MQTT reason, then input drained for ``linger_s``)."""

    def close_lingering(self, reason_code: int, linger_s: float) -> None: ...


class ClientHost(Protocol[C]):
    options: MqttOptions
    limits: Limits
    guard: Guard
    routes: RouteTable
    ingest: Ingest
    delivery: Delivery
    sessions: SessionManager
    wills: Wills
    retained: RetainedMessages

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run in the background; awaited (bounded) when the front-end stops."""
        ...

    def registered(self, client: C) -> None:
        """CONNECT accepted: the client id is this connection's on this instance."""
        ...

    def unregistered(self, client: C) -> None:
        """The connection is gone (its session saved or ended)."""
        ...

    async def prepare_feeds(self, subscription: Subscription) -> None:
        """Make sure every feed is ready, so attaching later needs no ``await`` in between."""
        ...

    async def attach(self, subscription: Subscription, resume: bool) -> None:
        """Start delivering: from saved positions (resume) or live."""
        ...

    async def rejoin(self, subscription: Subscription, topic: str) -> None:
        """Deliver ``topic`` again, from its start, after it was deleted; raises
        :class:`~bridge.model.errors.UnknownTopic` while it does not exist."""
        ...

    def detach(self, subscription: Subscription) -> None: ...
