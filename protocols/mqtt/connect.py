"""What a CONNECT decides before any I/O: who connects (:func:`admit`: the token, the client
id, the session's terms, the keepalive) and the CONNACK's properties. Functions of the packet and
the listener's options, so a connection only carries them out
(:meth:`protocols.mqtt.client.Client._connect`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import structlog

from bridge.edge.access import Principal
from bridge.edge.guard import AuthError, Guard
from bridge.telemetry import metrics

from .session_state import OWNER_SUFFIX
from .wire.connection import Connection, Limits
from .wire.packets import EMPTY_PROPERTIES, Connect, Properties, ReasonCode

log = structlog.get_logger(__name__)
PROTOCOL = "mqtt"
MAX_CLIENT_ID = 256
NEVER_EXPIRES = 0xFFFFFFFF


class ClientIdRefused(Exception):
    """The client id cannot be used; ``code`` is the CONNACK reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.code = ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
        self.reason = reason


class ConnectRefused(Exception):
    """The CONNECT is refused; ``code`` is the CONNACK reason (logged and counted already)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
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


def admit(
    connect: Connect,
    conn: Connection,
    guard: Guard,
    token: str | None,
    max_session_expiry: int,
    remote: str | None,
) -> tuple[Principal, Terms]:
    """Who connects, on what terms; raises :class:`ConnectRefused` (logged and counted) for a
    refused token, an unusable client id or a keepalive above the listener's maximum."""
    try:
        principal = guard.authenticate(token)
    except AuthError as exc:
        metrics.auth_rejected(PROTOCOL, exc)
        log.warning(
            "mqtt.auth_refused", client_id=connect.client_id, remote=remote, reason=exc.reason
        )
        raise ConnectRefused(
            ReasonCode.BAD_USER_NAME_OR_PASSWORD, f"token refused: {exc.reason}"
        ) from exc
    try:
        granted = terms(connect, conn.version, max_session_expiry)
    except ClientIdRefused as exc:
        metrics.rejected(PROTOCOL, "client_id_invalid")
        raise ConnectRefused(exc.code, exc.reason) from exc
    if conn.keepalive_refused(connect.keepalive):
        metrics.rejected(PROTOCOL, "keepalive_too_long")
        log.warning(
            "mqtt.keepalive_refused",
            client_id=connect.client_id,
            remote=remote,
            keepalive=connect.keepalive,
            max_keep_alive=conn.limits.max_keep_alive,
        )
        # 3.1.1 return code 2 (identifier rejected), as mosquitto's max_keepalive
        raise ConnectRefused(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "keepalive above the maximum")
    return principal, granted


def expiry_at_disconnect(
    version: int, expiry: int | None, properties: Properties, max_session_expiry: int
) -> int | None:
    """The session expiry after a DISCONNECT: an MQTT 5 client may change it there (capped by
    the listener), but not from 0 to more (a protocol error, MQTT-3.14.2-2: raises
    :class:`ConnectRefused` with the DISCONNECT reason)."""
    asked = properties.session_expiry_interval
    if version != 5 or asked is None:
        return expiry
    if expiry == 0 and asked > 0:
        raise ConnectRefused(ReasonCode.PROTOCOL_ERROR, "session expiry was 0 at CONNECT")
    return min(asked, max_session_expiry)
