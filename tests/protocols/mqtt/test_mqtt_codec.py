"""MQTT codec: byte-exact checks against paho-mqtt's encoding, and specific rejections."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import replace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from protocols.mqtt.wire.codec import Decoder, encode, prepare_publish
from protocols.mqtt.wire.packets import (
    EMPTY_PROPERTIES,
    Connack,
    Connect,
    Disconnect,
    MQTTProtocolError,
    Pingreq,
    Properties,
    Publish,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
)

# --------------------------------------------------------------------------------------------
# Bytes written by a real client (paho-mqtt) to a local listening socket
# --------------------------------------------------------------------------------------------


def capture_paho(
    protocol: int, drive: Callable[[mqtt.Client], None], **connect_kw: object
) -> bytes:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cid", protocol=protocol)
    try:
        client.username_pw_set("user", "pw")
        client.will_set("w/t", b"bye", qos=1, retain=True)
        client.connect("127.0.0.1", server.getsockname()[1], keepalive=17, **connect_kw)  # type: ignore[arg-type]
        conn, _ = server.accept()
        drive(client)
        for _ in range(10):
            client.loop_write()
        client.disconnect()
        conn.settimeout(0.2)
        data = b""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        conn.close()
        return data
    finally:
        client.socket() and client.socket().close()  # type: ignore[union-attr]
        server.close()


def _subscribe_and_publish(client: mqtt.Client) -> None:
    client.subscribe([("a/+", 1), ("b/#", 2)])
    client.publish("x/y", b"p0", qos=0)
    client.publish("x/y", b"p1", qos=1)
    client.publish("x/y", b"p2", qos=2, retain=True)


def _expected(v5: bool) -> list[object]:
    return [
        Connect(
            protocol_level=5 if v5 else 4,
            client_id="cid",
            clean_start=True,
            keepalive=17,
            will_topic="w/t",
            will_payload=b"bye",
            will_qos=1,
            will_retain=True,
            username="user",
            password=b"pw",
            properties=Properties(session_expiry_interval=30, user_properties=(("a", "b"),))
            if v5
            else EMPTY_PROPERTIES,
        ),
        Subscribe(1, (Subscription("a/+", 1), Subscription("b/#", 2))),
        Publish("x/y", b"p0"),
        Publish("x/y", b"p1", qos=1, packet_id=3),
        Publish("x/y", b"p2", qos=2, retain=True, packet_id=4),
        Disconnect(),
    ]


def test_paho_v311_session_decodes_and_reencodes_byte_exact() -> None:
    wire = capture_paho(mqtt.MQTTv311, _subscribe_and_publish)
    decoder = Decoder(max_packet_size=1024)
    packets = [p for i in range(len(wire)) for p in decoder.feed(wire[i : i + 1])]
    assert packets == _expected(v5=False)
    assert decoder.version == 4
    assert b"".join(encode(p, 4) for p in packets) == wire  # type: ignore[arg-type]


def test_paho_v5_session_with_properties_decodes_and_reencodes_byte_exact() -> None:
    props = PahoProperties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 30
    props.UserProperty = ("a", "b")
    wire = capture_paho(mqtt.MQTTv5, _subscribe_and_publish, clean_start=True, properties=props)
    decoder = Decoder(max_packet_size=1024)
    packets = decoder.feed(wire)
    assert packets == _expected(v5=True)
    assert decoder.version == 5
    assert b"".join(encode(p, 5) for p in packets) == wire  # type: ignore[arg-type]


def test_paho_v5_publish_and_subscribe_options() -> None:
    def drive(client: mqtt.Client) -> None:
        pp = PahoProperties(PacketTypes.PUBLISH)
        pp.ContentType = "text/plain"
        pp.MessageExpiryInterval = 60
        pp.ResponseTopic = "reply/1"
        pp.CorrelationData = b"\x01\x02"
        pp.PayloadFormatIndicator = 1
        pp.UserProperty = [("k", "v"), ("k", "w")]
        client.publish("t/1", "héllo".encode(), qos=1, properties=pp)
        opts = mqtt.SubscribeOptions(qos=2, noLocal=True, retainAsPublished=True, retainHandling=2)
        sp = PahoProperties(PacketTypes.SUBSCRIBE)
        sp.SubscriptionIdentifier = 42
        client.subscribe([("s/#", opts)], properties=sp)
        client.unsubscribe(["s/#", "q"])

    wire = capture_paho(mqtt.MQTTv5, drive)
    packets = Decoder().feed(wire)
    publish, subscribe = packets[1], packets[2]
    assert publish == Publish(
        "t/1",
        "héllo".encode(),
        qos=1,
        packet_id=1,
        properties=Properties(
            payload_format_indicator=1,
            message_expiry_interval=60,
            content_type="text/plain",
            response_topic="reply/1",
            correlation_data=b"\x01\x02",
            user_properties=(("k", "v"), ("k", "w")),
        ),
    )
    assert subscribe == Subscribe(
        2,
        (Subscription("s/#", 2, no_local=True, retain_as_published=True, retain_handling=2),),
        Properties(subscription_identifiers=(42,)),
    )
    assert packets[3].topic_filters == ("s/#", "q")  # type: ignore[union-attr]
    # Re-encoding gives paho's bytes back (same property order).
    assert b"".join(encode(p, 5) for p in packets) == wire  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Encoder details
# --------------------------------------------------------------------------------------------


def test_known_encodings() -> None:
    assert encode(Pingreq(), 4) == b"\xc0\x00"
    assert encode(Connack(), 4) == b"\x20\x02\x00\x00"
    assert encode(Connack(True), 5) == b"\x20\x03\x01\x00\x00"
    assert encode(Pubrel(7), 5) == b"\x62\x02\x00\x07"
    assert encode(Pubrel(7, 0x92), 5) == b"\x62\x03\x00\x07\x92"
    assert encode(Disconnect(), 5) == b"\xe0\x00"
    assert encode(Disconnect(ReasonCode.SESSION_TAKEN_OVER), 5) == b"\xe0\x01\x8e"
    assert encode(Disconnect(ReasonCode.SESSION_TAKEN_OVER), 4) == b"\xe0\x00"
    assert encode(Unsuback(3, (0, 0x11)), 4) == b"\xb0\x02\x00\x03"


def test_v311_connack_and_suback_map_mqtt5_codes() -> None:
    assert encode(Connack(reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION), 4)[-1] == 1
    assert encode(Connack(reason_code=ReasonCode.BAD_USER_NAME_OR_PASSWORD), 4)[-1] == 4
    assert encode(Connack(reason_code=ReasonCode.NOT_AUTHORIZED), 4)[-1] == 5
    assert encode(Connack(reason_code=ReasonCode.SERVER_BUSY), 4)[-1] == 3
    assert encode(Suback(1, (1, ReasonCode.NOT_AUTHORIZED)), 4) == b"\x90\x04\x00\x01\x01\x80"


def test_long_remaining_length_round_trips() -> None:
    packet = Publish("big", b"z" * 200_000, qos=2, packet_id=9)
    wire = encode(packet, 5)
    remaining = 2 + 3 + 2 + 1 + 200_000
    assert wire[1:4] == bytes(
        (remaining & 0x7F | 0x80, remaining >> 7 & 0x7F | 0x80, remaining >> 14)
    )
    decoder = Decoder(version=5)
    out = []
    for i in range(0, len(wire), 1000):
        out += decoder.feed(wire[i : i + 1000])
    assert out == [packet]


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_prepare_publish_matches_encode(version: int, qos: int) -> None:
    props = Properties(content_type="a/b") if version == 5 else EMPTY_PROPERTIES
    prepared = prepare_publish("t/x", b"payload", qos=qos, properties=props, version=version)
    for retain in (False, True):
        for dup in (False, True) if qos else (False,):
            pid = 513 if qos else None
            expected = Publish("t/x", b"payload", qos, retain, dup, pid, props)
            assert prepared.packet(pid, dup=dup, retain=retain) == encode(expected, version)


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("payload", [b"", b"x" * 200])  # 1- and 2-byte remaining lengths
@pytest.mark.parametrize(
    "props", [EMPTY_PROPERTIES, Properties(content_type="a/b", user_properties=(("k", "v"),))]
)
def test_aliased_publish_decodes_to_the_same_message_with_the_alias(
    qos: int, payload: bytes, props: Properties
) -> None:
    prepared = prepare_publish("t/x", payload, qos=qos, properties=props, version=5)
    pid = 513 if qos else None
    for with_topic in (True, False):
        wire = prepared.aliased(65535, with_topic, pid, dup=bool(qos), retain=True)
        [packet] = Decoder(version=5, server=False).feed(wire)
        expected_props = replace(props, topic_alias=65535)
        topic = "t/x" if with_topic else ""
        assert packet == Publish(topic, payload, qos, True, bool(qos), pid, expected_props)


def test_mqisdp_level_3_is_accepted_as_311() -> None:
    wire = encode(Connect(protocol_level=3, client_id="old"), 4)
    assert wire[2:10] == b"\x00\x06MQIsdp"
    decoder = Decoder()
    assert decoder.feed(wire) == [Connect(protocol_level=3, client_id="old")]
    assert decoder.version == 4


# --------------------------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------------------------

CONNECT5 = encode(Connect(protocol_level=5, client_id="c"), 5)
CONNECT4 = encode(Connect(protocol_level=4, client_id="c"), 4)


def rejects(wire: bytes, code: int, *, version: int | None = None, server: bool = True) -> str:
    decoder = Decoder(max_packet_size=1024, version=version, server=server)
    with pytest.raises(MQTTProtocolError) as info:
        decoder.feed(wire)
    assert info.value.reason_code == code, info.value
    # The decoder stays broken.
    with pytest.raises(MQTTProtocolError):
        decoder.feed(b"")
    return info.value.message


def test_oversized_packet_rejected_from_its_header_alone() -> None:
    decoder = Decoder(max_packet_size=100, version=5)
    with pytest.raises(MQTTProtocolError) as info:
        decoder.feed(b"\x30\xff\x7f")  # remaining length 16383, no body yet
    assert info.value.reason_code == ReasonCode.PACKET_TOO_LARGE
    # Exactly at the limit is fine: 2 header bytes + 98.
    ok = Decoder(max_packet_size=100, version=5)
    assert len(ok.feed(encode(Publish("t", b"x" * 93), 5))) == 1


def test_remaining_length_over_four_bytes() -> None:
    rejects(b"\x30\xff\xff\xff\xff\x01", ReasonCode.MALFORMED_PACKET, version=5)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x60\x02\x00\x01",  # PUBREL must have flags 0b0010
        b"\x80\x06\x00\x01\x00\x01a\x00",  # SUBSCRIBE must have flags 0b0010
        b"\xc1\x00",  # PINGREQ with a flag
        b"\x00\x00",  # reserved packet type 0
    ],
)
def test_bad_fixed_header_flags(wire: bytes) -> None:
    rejects(wire, ReasonCode.MALFORMED_PACKET, version=5)


def test_reserved_connect_flag() -> None:
    wire = bytearray(CONNECT4)
    wire[9] |= 0x01
    rejects(bytes(wire), ReasonCode.MALFORMED_PACKET)


def test_wildcards_in_publish_topic() -> None:
    for topic in ("a/+", "a/#", "#"):
        wire = encode(Publish(topic, b""), 5)
        rejects(CONNECT5 + wire, ReasonCode.TOPIC_NAME_INVALID)


def test_qos_3() -> None:
    rejects(b"\x36\x05\x00\x01a\x00\x01", ReasonCode.MALFORMED_PACKET, version=4)
    rejects(b"\x82\x06\x00\x01\x00\x01a\x03", ReasonCode.MALFORMED_PACKET, version=4)
    wire = bytearray(encode(Connect(will_topic="w", will_qos=2), 4))
    wire[9] |= 0x18
    rejects(bytes(wire), ReasonCode.MALFORMED_PACKET)


@pytest.mark.parametrize("bad", [b"\xed\xa0\x80", b"\xc0\x80", b"\xff", b"a\x00b", b"\xe2\x82"])
def test_invalid_utf8_in_topic(bad: bytes) -> None:
    body = len(bad).to_bytes(2, "big") + bad
    rejects(bytes((0x30, len(body))) + body, ReasonCode.MALFORMED_PACKET, version=4)


def test_duplicate_property() -> None:
    props = b"\x02\x00\x00\x00\x01" * 2  # message expiry interval twice
    body = b"\x00\x01t" + bytes((len(props),)) + props
    msg = rejects(bytes((0x30, len(body))) + body, ReasonCode.PROTOCOL_ERROR, version=5)
    assert "more than once" in msg
    # User properties may repeat; one subscription identifier per SUBSCRIBE only.
    props = b"\x0b\x01\x0b\x02"
    body = b"\x00\x01" + bytes((len(props),)) + props + b"\x00\x01a\x00"
    rejects(bytes((0x82, len(body))) + body, ReasonCode.PROTOCOL_ERROR, version=5)


def test_property_not_allowed_in_packet() -> None:
    props = b"\x12\x00\x01x"  # assigned client identifier in a PUBLISH
    body = b"\x00\x01t" + bytes((len(props),)) + props
    rejects(bytes((0x30, len(body))) + body, ReasonCode.MALFORMED_PACKET, version=5)


def test_property_values() -> None:
    body = b"\x00\x01t\x03\x23\x00\x00"  # topic alias 0
    rejects(bytes((0x30, len(body))) + body, ReasonCode.TOPIC_ALIAS_INVALID, version=5)
    body = b"\x00\x01t\x02\x01\x02"  # payload format indicator 2
    rejects(bytes((0x30, len(body))) + body, ReasonCode.PROTOCOL_ERROR, version=5)
    body = b"\x00\x00\x00"  # empty topic, no alias
    rejects(bytes((0x30, len(body))) + body, ReasonCode.PROTOCOL_ERROR, version=5)


def test_client_publish_with_subscription_identifier() -> None:
    wire = encode(Publish("t", properties=Properties(subscription_identifiers=(1,))), 5)
    rejects(wire, ReasonCode.PROTOCOL_ERROR, version=5)
    assert Decoder(version=5, server=False).feed(wire)[0].properties.subscription_identifiers  # type: ignore[union-attr]


def test_packet_id_zero() -> None:
    rejects(b"\x32\x05\x00\x01t\x00\x00", ReasonCode.MALFORMED_PACKET, version=4)
    rejects(b"\x40\x02\x00\x00", ReasonCode.MALFORMED_PACKET, version=4)
    rejects(b"\x82\x06\x00\x00\x00\x01a\x00", ReasonCode.MALFORMED_PACKET, version=4)


def test_subscribe_without_topics_or_with_empty_filter() -> None:
    rejects(b"\x82\x02\x00\x01", ReasonCode.PROTOCOL_ERROR, version=4)
    rejects(b"\x82\x03\x00\x01\x00", ReasonCode.PROTOCOL_ERROR, version=5)
    rejects(b"\x82\x05\x00\x01\x00\x00\x00", ReasonCode.PROTOCOL_ERROR, version=4)
    rejects(b"\xa2\x02\x00\x01", ReasonCode.PROTOCOL_ERROR, version=4)


def test_subscription_options() -> None:
    rejects(b"\x82\x06\x00\x01\x00\x01a\x04", ReasonCode.MALFORMED_PACKET, version=4)  # 3.1.1
    rejects(b"\x82\x07\x00\x01\x00\x00\x01a\x30", ReasonCode.PROTOCOL_ERROR, version=5)  # RH 3
    rejects(b"\x82\x07\x00\x01\x00\x00\x01a\x40", ReasonCode.MALFORMED_PACKET, version=5)
    shared = encode(Subscribe(1, (Subscription("$share/g/t", no_local=True),)), 5)
    rejects(shared, ReasonCode.PROTOCOL_ERROR, version=5)


def test_connect_sequence_rules() -> None:
    rejects(b"\xc0\x00", ReasonCode.PROTOCOL_ERROR)  # first packet not CONNECT
    rejects(CONNECT4 + CONNECT4, ReasonCode.PROTOCOL_ERROR)  # second CONNECT
    rejects(CONNECT5 + b"\x20\x02\x00\x00", ReasonCode.PROTOCOL_ERROR)  # CONNACK from client
    rejects(CONNECT4 + b"\xf0\x00", ReasonCode.PROTOCOL_ERROR)  # AUTH in 3.1.1


def test_unsupported_protocol_versions() -> None:
    for name, level in ((b"MQTT", 3), (b"MQTT", 6), (b"MQIsdp", 4), (b"HTTP", 4)):
        body = len(name).to_bytes(2, "big") + name + bytes((level, 2, 0, 0, 0, 0))
        rejects(bytes((0x10, len(body))) + body, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)


def test_v311_password_without_username() -> None:
    wire = bytearray(encode(Connect(protocol_level=5, password=b"pw"), 5))
    assert Decoder().feed(bytes(wire))[0].password == b"pw"  # type: ignore[union-attr]
    rejects(encode(Connect(password=b"pw"), 4), ReasonCode.PROTOCOL_ERROR)


def test_trailing_and_truncated_bodies() -> None:
    rejects(b"\x40\x03\x00\x01\x00", ReasonCode.MALFORMED_PACKET, version=4)  # 3.1.1 PUBACK
    rejects(b"\xc0\x01\x00", ReasonCode.MALFORMED_PACKET, version=4)
    rejects(b"\x30\x03\x00\x05a", ReasonCode.MALFORMED_PACKET, version=4)  # string overruns
    rejects(CONNECT4[:1] + bytes((CONNECT4[1] + 1,)) + CONNECT4[2:] + b"\x00", 0x81)


def test_packets_before_an_error_are_kept_on_the_exception() -> None:
    decoder = Decoder()
    with pytest.raises(MQTTProtocolError) as info:
        decoder.feed(CONNECT4 + b"\xc0\x00" + b"\xc1\x00")
    assert info.value.packets == (Connect(client_id="c"), Pingreq())  # type: ignore[attr-defined]
