"""What a CONNECT decides before any I/O: the client id, the session's terms, the CONNACK's
properties. Pure functions of the packet and the listener's options, so a connection only
carries them out (:meth:`protocols.mqtt.client.Client._connect`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from .session_state import OWNER_SUFFIX
from .wire.connection import Limits
from .wire.packets import EMPTY_PROPERTIES, Connect, Properties, ReasonCode

MAX_CLIENT_ID = 256
NEVER_EXPIRES = 0xFFFFFFFF


class ClientIdRefused(Exception):
    """The client id cannot be used; ``code`` is the CONNACK reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.code = ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Terms:
    """The session a CONNECT asks for, as granted."""

    client_id: str
    assigned: str | None  # the id we made up for an empty one (MQTT 5 tells the client)
    persistent: bool  # state outlives the connection
    expiry: int | None  # seconds after the connection ends; None: never (3.1.1 persistent)


def terms(connect: Connect, version: int, max_session_expiry: int) -> Terms:
    """The client id and the session's persistence and expiry. Raises :class:`ClientIdRefused`
    for an empty id without a clean session (3.1.1) and for ids the sessions table reserves."""
    client_id = connect.client_id
    assigned = None
    if not client_id:
        if version != 5 and not connect.clean_start:
            raise ClientIdRefused("empty client id needs clean session")
        client_id = assigned = f"eb-{uuid.uuid4().hex[:20]}"
    if (
        client_id.endswith(OWNER_SUFFIX)
        or client_id.startswith("$share#")
        or len(client_id) > MAX_CLIENT_ID
    ):
        raise ClientIdRefused("client id not allowed")
    if version != 5:
        persistent = not connect.clean_start
        return Terms(client_id, assigned, persistent, None if persistent else 0)
    asked = connect.properties.session_expiry_interval
    expiry: int | None = min(asked or 0, max_session_expiry)
    persistent = bool(expiry)
    if asked == NEVER_EXPIRES and max_session_expiry >= NEVER_EXPIRES:
        expiry = None
    return Terms(client_id, assigned, persistent, expiry)


def connack_properties(
    connect: Connect, version: int, limits: Limits, granted: Terms, keepalive: int | None = None
) -> Properties:
    """The MQTT 5 CONNACK properties: what the server allows, the assigned client id, and the
    session expiry and keepalive (``keepalive``: as granted) if they differ from what the
    client asked for."""
    if version != 5:
        return EMPTY_PROPERTIES
    if keepalive is None:
        keepalive = limits.server_keep_alive
    elif keepalive == connect.keepalive and not limits.server_keep_alive:
        keepalive = None  # as asked: nothing to say
    asked = connect.properties.session_expiry_interval
    expiry = granted.expiry
    return Properties(
        assigned_client_identifier=granted.assigned,
        session_expiry_interval=expiry
        if expiry is not None and asked and expiry != asked
        else None,
        receive_maximum=limits.receive_maximum,
        topic_alias_maximum=limits.topic_alias_maximum,
        maximum_packet_size=limits.max_packet_size,
        server_keep_alive=keepalive,
        retain_available=1,
        wildcard_subscription_available=1,
        subscription_identifier_available=1,
        shared_subscription_available=1,
    )
