"""MQTT control packets (3.1.1 and 5.0) as plain, immutable data classes.

Nothing here reads or writes bytes: :mod:`protocols.mqtt.codec` turns bytes into these objects
and back. Every class covers both protocol versions; fields that only exist in MQTT 5.0 (reason
codes on acknowledgements, ``properties``) keep their defaults when a 3.1.1 peer is involved and
are ignored when encoding for 3.1.1.

Sequences are tuples so that packets stay hashable and immutable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "EMPTY_PROPERTIES",
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "MQTTProtocolError",
    "Packet",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Properties",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "ReasonCode",
    "Suback",
    "Subscribe",
    "Subscription",
    "Unsuback",
    "Unsubscribe",
]


class PacketType(IntEnum):
    """Control packet type: the high nibble of the first byte of the fixed header."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  #: MQTT 5.0 only; reserved (forbidden) in 3.1.1.


class ReasonCode(IntEnum):
    """MQTT 5.0 reason codes (spec section 2.4), plus the 3.1.1 CONNACK return codes.

    Several MQTT 5 names share a value (``SUCCESS`` = ``NORMAL_DISCONNECTION`` =
    ``GRANTED_QOS_0`` = 0); the 3.1.1 return codes are prefixed ``V3_`` and also share values
    with MQTT 5 names (``V3_UNACCEPTABLE_PROTOCOL_VERSION`` = ``GRANTED_QOS_1`` = 1), so compare
    by value, not by name. :func:`protocols.mqtt.codec.encode` maps MQTT 5 CONNACK failure codes
    to the nearest 3.1.1 return code when encoding for 3.1.1, so callers may always use the
    MQTT 5 names.
    """

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

    # MQTT 3.1.1 CONNACK return codes (section 3.2.2.3).
    V3_CONNECTION_ACCEPTED = 0x00
    V3_UNACCEPTABLE_PROTOCOL_VERSION = 0x01
    V3_IDENTIFIER_REJECTED = 0x02
    V3_SERVER_UNAVAILABLE = 0x03
    V3_BAD_USER_NAME_OR_PASSWORD = 0x04
    V3_NOT_AUTHORIZED = 0x05


class MQTTProtocolError(Exception):
    """The peer sent bytes that break the MQTT specification.

    This is the only exception :class:`protocols.mqtt.codec.Decoder` raises for bad input.
    ``reason_code`` says how to answer: before a CONNACK has been sent, a CONNACK with that code
    (3.1.1: the return code, if there is one); afterwards, for MQTT 5, a DISCONNECT with it;
    then close the connection.
    """

    def __init__(self, reason_code: int, message: str) -> None:
        super().__init__(reason_code, message)
        #: Why the packet was refused, e.g. ``ReasonCode.MALFORMED_PACKET``.
        self.reason_code: ReasonCode = ReasonCode(reason_code)
        #: Human-readable detail (suitable for an MQTT 5 Reason String).
        self.message: str = message

    def __str__(self) -> str:
        return f"{self.reason_code.name} (0x{self.reason_code:02X}): {self.message}"


@dataclass(frozen=True, slots=True, repr=False)
class Properties:
    """MQTT 5.0 properties (spec section 2.2.2.2). ``None`` / empty means "absent".

    Which properties a packet may carry is checked by the decoder; the comment after each field
    names the packets where it is allowed ("Will" = the CONNECT will properties).
    """

    #: 0x01, byte 0/1 - 1 means the payload is UTF-8 text. PUBLISH, Will.
    payload_format_indicator: int | None = None
    #: 0x02, seconds the message may live. PUBLISH, Will.
    message_expiry_interval: int | None = None
    #: 0x03, MIME type of the payload. PUBLISH, Will.
    content_type: str | None = None
    #: 0x08, topic name for a response (request/response pattern). PUBLISH, Will.
    response_topic: str | None = None
    #: 0x09, opaque data echoed in the response. PUBLISH, Will.
    correlation_data: bytes | None = None
    #: 0x0B, 1..268435455. PUBLISH (server to client, any number), SUBSCRIBE (at most one).
    subscription_identifiers: tuple[int, ...] = ()
    #: 0x11, seconds the session outlives the connection. CONNECT, CONNACK, DISCONNECT.
    session_expiry_interval: int | None = None
    #: 0x12, client id chosen by the server for an empty one. CONNACK.
    assigned_client_identifier: str | None = None
    #: 0x13, keep-alive the server imposes, seconds. CONNACK.
    server_keep_alive: int | None = None
    #: 0x15, name of the extended authentication method. CONNECT, CONNACK, AUTH.
    authentication_method: str | None = None
    #: 0x16, method-specific authentication data. CONNECT, CONNACK, AUTH.
    authentication_data: bytes | None = None
    #: 0x17, byte 0/1 - may the server send reason strings / user properties. CONNECT.
    request_problem_information: int | None = None
    #: 0x18, seconds to wait before publishing the will. Will.
    will_delay_interval: int | None = None
    #: 0x19, byte 0/1 - client asks for response information in CONNACK. CONNECT.
    request_response_information: int | None = None
    #: 0x1A, basis for response topics. CONNACK.
    response_information: str | None = None
    #: 0x1C, another server the client may use. CONNACK, DISCONNECT.
    server_reference: str | None = None
    #: 0x1F, human-readable diagnostic. CONNACK, PUBACK/REC/REL/COMP, SUBACK, UNSUBACK,
    #: DISCONNECT, AUTH.
    reason_string: str | None = None
    #: 0x21, 1..65535 in-flight QoS>0 publishes the sender accepts. CONNECT, CONNACK.
    receive_maximum: int | None = None
    #: 0x22, highest topic alias the sender accepts. CONNECT, CONNACK.
    topic_alias_maximum: int | None = None
    #: 0x23, 1..65535 alias standing for the topic name. PUBLISH.
    topic_alias: int | None = None
    #: 0x24, byte 0/1 - highest QoS the server supports (absent means 2). CONNACK.
    maximum_qos: int | None = None
    #: 0x25, byte 0/1 - does the server support retained messages. CONNACK.
    retain_available: int | None = None
    #: 0x26, (name, value) string pairs, order kept, names may repeat. All packets.
    user_properties: tuple[tuple[str, str], ...] = ()
    #: 0x27, largest packet (whole, in bytes) the sender accepts; not 0. CONNECT, CONNACK.
    maximum_packet_size: int | None = None
    #: 0x28, byte 0/1 - wildcard subscriptions supported. CONNACK.
    wildcard_subscription_available: int | None = None
    #: 0x29, byte 0/1 - subscription identifiers supported. CONNACK.
    subscription_identifier_available: int | None = None
    #: 0x2A, byte 0/1 - shared subscriptions supported. CONNACK.
    shared_subscription_available: int | None = None

    def __repr__(self) -> str:
        # Only the properties that are present; the full 27-field repr drowns every packet.
        shown = []
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None and value != ():
                shown.append(f"{name}={value!r}")
        return f"Properties({', '.join(shown)})"


#: The shared "no properties" instance; the decoder returns it whenever the property length is 0.
EMPTY_PROPERTIES = Properties()


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (client to server): the first packet of every connection."""

    #: 4 = MQTT 3.1.1, 5 = MQTT 5.0, 3 = legacy MQTT 3.1 ("MQIsdp", decoded like 3.1.1).
    protocol_level: int = 4
    #: Client identifier; may be empty (the server then assigns one, or refuses with 3.1.1
    #: unless ``clean_start``).
    client_id: str = ""
    #: 3.1.1 "Clean Session" / 5.0 "Clean Start".
    clean_start: bool = True
    #: Keep-alive in seconds, 0 = disabled.
    keepalive: int = 0
    #: Will topic name; ``None`` means no will message (and the other ``will_*`` fields must
    #: keep their defaults).
    will_topic: str | None = None
    #: Will message payload.
    will_payload: bytes = b""
    #: Will QoS, 0..2.
    will_qos: int = 0
    #: Publish the will as retained.
    will_retain: bool = False
    #: MQTT 5 will properties (payload format, expiry, content type, response topic,
    #: correlation data, will delay, user properties).
    will_properties: Properties = EMPTY_PROPERTIES
    #: User name, ``None`` if absent.
    username: str | None = None
    #: Password (binary data), ``None`` if absent. 3.1.1 requires a user name with it.
    password: bytes | None = None
    #: MQTT 5 CONNECT properties.
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK (server to client): the answer to CONNECT."""

    #: The server resumed a stored session.
    session_present: bool = False
    #: MQTT 5 reason code, or a 3.1.1 return code (0..5). Encoding for 3.1.1 maps MQTT 5
    #: failure codes to the nearest return code.
    reason_code: int = 0
    #: MQTT 5 CONNACK properties (assigned client id, limits, server capabilities, ...).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (both directions): one application message."""

    #: Topic name, no wildcards; MQTT 5 allows "" when ``properties.topic_alias`` is set.
    topic: str
    #: Application payload.
    payload: bytes = b""
    #: Delivery QoS, 0..2.
    qos: int = 0
    #: Retain flag.
    retain: bool = False
    #: Re-delivery flag; only with QoS > 0.
    dup: bool = False
    #: 1..65535 when ``qos`` > 0, otherwise ``None``.
    packet_id: int | None = None
    #: MQTT 5 PUBLISH properties.
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Puback:
    """PUBACK: acknowledges a QoS 1 PUBLISH."""

    #: Packet identifier of the PUBLISH, 1..65535.
    packet_id: int
    #: MQTT 5 reason code (0 = success, 0x10 no matching subscribers, >= 0x80 failure).
    reason_code: int = 0
    #: MQTT 5 properties (reason string, user properties).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubrec:
    """PUBREC: first acknowledgement of a QoS 2 PUBLISH."""

    #: Packet identifier of the PUBLISH, 1..65535.
    packet_id: int
    #: MQTT 5 reason code (as PUBACK).
    reason_code: int = 0
    #: MQTT 5 properties (reason string, user properties).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubrel:
    """PUBREL: answers PUBREC (QoS 2, second step). Fixed header flags are 0b0010."""

    #: Packet identifier of the PUBLISH, 1..65535.
    packet_id: int
    #: MQTT 5 reason code: 0 or 0x92 (packet identifier not found).
    reason_code: int = 0
    #: MQTT 5 properties (reason string, user properties).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubcomp:
    """PUBCOMP: answers PUBREL (QoS 2, last step)."""

    #: Packet identifier of the PUBLISH, 1..65535.
    packet_id: int
    #: MQTT 5 reason code: 0 or 0x92 (packet identifier not found).
    reason_code: int = 0
    #: MQTT 5 properties (reason string, user properties).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Subscription:
    """One topic filter of a SUBSCRIBE and its subscription options."""

    #: Topic filter (non-empty, may contain ``+`` / ``#``; its syntax is checked by ``bridge``).
    topic_filter: str
    #: Maximum QoS, 0..2.
    qos: int = 0
    #: MQTT 5: do not deliver the client's own publications back to it.
    no_local: bool = False
    #: MQTT 5: keep the RETAIN flag of forwarded messages as published.
    retain_as_published: bool = False
    #: MQTT 5: 0 = send retained messages on subscribe, 1 = only if the subscription is new,
    #: 2 = never.
    retain_handling: int = 0


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (client to server). Fixed header flags are 0b0010."""

    #: Packet identifier, 1..65535.
    packet_id: int
    #: At least one subscription.
    subscriptions: tuple[Subscription, ...]
    #: MQTT 5 properties (one subscription identifier, user properties).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Suback:
    """SUBACK (server to client): one reason code per requested subscription, in order."""

    #: Packet identifier of the SUBSCRIBE.
    packet_id: int
    #: Granted QoS (0..2) or a failure code (3.1.1: only 0x80).
    reason_codes: tuple[int, ...]
    #: MQTT 5 properties (reason string, user properties).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (client to server). Fixed header flags are 0b0010."""

    #: Packet identifier, 1..65535.
    packet_id: int
    #: At least one (non-empty) topic filter.
    topic_filters: tuple[str, ...]
    #: MQTT 5 properties (user properties).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsuback:
    """UNSUBACK (server to client)."""

    #: Packet identifier of the UNSUBSCRIBE.
    packet_id: int
    #: MQTT 5: one reason code per topic filter; always empty for 3.1.1.
    reason_codes: tuple[int, ...] = ()
    #: MQTT 5 properties (reason string, user properties).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pingreq:
    """PINGREQ (client to server): keep-alive probe."""


@dataclass(frozen=True, slots=True)
class Pingresp:
    """PINGRESP (server to client): answer to PINGREQ."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT: client to server in 3.1.1; either direction in MQTT 5."""

    #: MQTT 5 reason code (0 = normal, 0x04 = disconnect with will message, ...).
    reason_code: int = 0
    #: MQTT 5 properties (session expiry, reason string, server reference, user properties).
    properties: Properties = EMPTY_PROPERTIES


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (MQTT 5 only): extended authentication exchange."""

    #: 0 = success, 0x18 = continue authentication, 0x19 = re-authenticate.
    reason_code: int = 0
    #: Authentication method / data, reason string, user properties.
    properties: Properties = EMPTY_PROPERTIES


#: Any control packet.
Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)
