"""Property tests for the MQTT codec: round trips of every packet type in both versions, and
arbitrary / mutated input that must only ever raise MQTTProtocolError."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.mqtt.wire.codec import Decoder, encode
from protocols.mqtt.wire.packets import (
    EMPTY_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    MQTTProtocolError,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
)

texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
topic_names = texts.filter(lambda t: t and "+" not in t and "#" not in t)
topic_filters = texts.filter(bool)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
flag = st.integers(0, 1)
packet_ids = st.integers(1, 0xFFFF)
binary = st.binary(max_size=16)

PROPERTY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "payload_format_indicator": flag,
    "message_expiry_interval": u32,
    "content_type": texts,
    "response_topic": texts,
    "correlation_data": binary,
    "subscription_identifiers": st.lists(st.integers(1, 268_435_455), min_size=1, max_size=3).map(
        tuple
    ),
    "session_expiry_interval": u32,
    "assigned_client_identifier": texts,
    "server_keep_alive": u16,
    "authentication_method": texts,
    "authentication_data": binary,
    "request_problem_information": flag,
    "will_delay_interval": u32,
    "request_response_information": flag,
    "response_information": texts,
    "server_reference": texts,
    "reason_string": texts,
    "receive_maximum": st.integers(1, 0xFFFF),
    "topic_alias_maximum": u16,
    "topic_alias": st.integers(1, 0xFFFF),
    "maximum_qos": flag,
    "retain_available": flag,
    "user_properties": st.lists(st.tuples(texts, texts), min_size=1, max_size=3).map(tuple),
    "maximum_packet_size": st.integers(1, 0xFFFFFFFF),
    "wildcard_subscription_available": flag,
    "subscription_identifier_available": flag,
    "shared_subscription_available": flag,
}

ACK_PROPS = ("reason_string", "user_properties")
ALLOWED: dict[str, tuple[str, ...]] = {
    "connect": (
        "session_expiry_interval",
        "authentication_method",
        "authentication_data",
        "request_problem_information",
        "request_response_information",
        "receive_maximum",
        "topic_alias_maximum",
        "user_properties",
        "maximum_packet_size",
    ),
    "will": (
        "payload_format_indicator",
        "message_expiry_interval",
        "content_type",
        "response_topic",
        "correlation_data",
        "will_delay_interval",
        "user_properties",
    ),
    "connack": (
        "session_expiry_interval",
        "assigned_client_identifier",
        "server_keep_alive",
        "authentication_method",
        "authentication_data",
        "response_information",
        "server_reference",
        "reason_string",
        "receive_maximum",
        "topic_alias_maximum",
        "maximum_qos",
        "retain_available",
        "user_properties",
        "maximum_packet_size",
        "wildcard_subscription_available",
        "subscription_identifier_available",
        "shared_subscription_available",
    ),
    "publish": (
        "payload_format_indicator",
        "message_expiry_interval",
        "content_type",
        "response_topic",
        "correlation_data",
        "subscription_identifiers",
        "topic_alias",
        "user_properties",
    ),
    "ack": ACK_PROPS,
    "subscribe": ("user_properties",),
    "unsubscribe": ("user_properties",),
    "disconnect": ("session_expiry_interval", "server_reference", *ACK_PROPS),
    "auth": ("authentication_method", "authentication_data", *ACK_PROPS),
}


@st.composite
def properties(draw: st.DrawFn, kind: str) -> Properties:
    names = draw(st.lists(st.sampled_from(ALLOWED[kind]), unique=True, max_size=4))
    kw = {name: draw(PROPERTY_VALUES[name]) for name in names}
    if kind == "connect" and "authentication_data" in kw:
        kw.setdefault("authentication_method", "m")
    if kind == "subscribe":
        kw["subscription_identifiers"] = draw(
            st.lists(st.integers(1, 268_435_455), max_size=1).map(tuple)
        )
    return Properties(**kw) if kw else EMPTY_PROPERTIES


def props_for(v5: bool, kind: str) -> st.SearchStrategy[Properties]:
    return properties(kind) if v5 else st.just(EMPTY_PROPERTIES)


@st.composite
def connects(draw: st.DrawFn, v5: bool) -> Connect:
    level = 5 if v5 else draw(st.sampled_from([3, 4]))
    kw: dict[str, Any] = {
        "protocol_level": level,
        "client_id": draw(texts),
        "clean_start": draw(st.booleans()),
        "keepalive": draw(u16),
        "properties": draw(props_for(v5, "connect")),
    }
    if draw(st.booleans()):
        kw.update(
            will_topic=draw(topic_names),
            will_payload=draw(binary),
            will_qos=draw(st.integers(0, 2)),
            will_retain=draw(st.booleans()),
            will_properties=draw(props_for(v5, "will")),
        )
    kw["username"] = draw(st.none() | texts)
    if v5 or kw["username"] is not None:
        kw["password"] = draw(st.none() | binary)
    return Connect(**kw)


V5_CONNACK = [0x00, *range(0x80, 0x8B), 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F]
V5_PUBACK = [0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
V5_SUBACK = [0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2]
V5_UNSUBACK = [0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]
V5_DISCONNECT = [0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90]
V5_DISCONNECT += list(range(0x93, 0xA3))


def reason(v5: bool, codes: list[int]) -> st.SearchStrategy[int]:
    return st.sampled_from(codes) if v5 else st.just(0)


@st.composite
def publishes(draw: st.DrawFn, v5: bool) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(props_for(v5, "publish"))
    topic = draw(topic_names | st.just("")) if props.topic_alias else draw(topic_names)
    return Publish(
        topic=topic,
        payload=draw(st.binary(max_size=64)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
        properties=props,
    )


@st.composite
def subscriptions(draw: st.DrawFn, v5: bool) -> Subscription:
    topic_filter = draw(topic_filters | st.just("$share/g/a/#"))
    if not v5:
        return Subscription(topic_filter, draw(st.integers(0, 2)))
    return Subscription(
        topic_filter,
        draw(st.integers(0, 2)),
        no_local=draw(st.booleans()) and not topic_filter.startswith("$share/"),
        retain_as_published=draw(st.booleans()),
        retain_handling=draw(st.integers(0, 2)),
    )


def client_options(v5: bool) -> list[st.SearchStrategy[Any]]:
    """One strategy per packet type a client sends (decoded with server=True)."""
    ack_rc = reason(v5, V5_PUBACK)
    rel_rc = reason(v5, [0x00, 0x92])
    acks = props_for(v5, "ack")
    options: list[st.SearchStrategy[Any]] = [
        connects(v5),
        st.builds(Puback, packet_ids, ack_rc, acks),
        st.builds(Pubrec, packet_ids, ack_rc, acks),
        st.builds(Pubrel, packet_ids, rel_rc, acks),
        st.builds(Pubcomp, packet_ids, rel_rc, acks),
        st.builds(
            Subscribe,
            packet_ids,
            st.lists(subscriptions(v5), min_size=1, max_size=4).map(tuple),
            props_for(v5, "subscribe"),
        ),
        st.builds(
            Unsubscribe,
            packet_ids,
            st.lists(topic_filters, min_size=1, max_size=4).map(tuple),
            props_for(v5, "unsubscribe"),
        ),
        st.just(Pingreq()),
        st.builds(Disconnect, reason(v5, V5_DISCONNECT), props_for(v5, "disconnect")),
    ]
    if v5:
        options.append(st.builds(Auth, st.sampled_from([0, 0x18, 0x19]), properties("auth")))
    return options


def client_packets(v5: bool) -> st.SearchStrategy[Packet]:
    return st.one_of(client_options(v5))


def server_options(v5: bool) -> list[st.SearchStrategy[Any]]:
    """One strategy per packet type a server sends (decoded with server=False)."""
    options: list[st.SearchStrategy[Any]] = [
        st.builds(
            Connack,
            st.booleans(),
            st.sampled_from(V5_CONNACK) if v5 else st.integers(0, 5),
            props_for(v5, "connack"),
        ),
        publishes(v5),
        st.builds(
            Suback,
            packet_ids,
            st.lists(
                st.sampled_from(V5_SUBACK if v5 else [0, 1, 2, 0x80]), min_size=1, max_size=4
            ).map(tuple),
            props_for(v5, "ack"),
        ),
        st.builds(
            Unsuback,
            packet_ids,
            st.lists(st.sampled_from(V5_UNSUBACK), min_size=1, max_size=4).map(tuple)
            if v5
            else st.just(()),
            props_for(v5, "ack"),
        ),
        st.just(Pingresp()),
    ]
    return options


def server_packets(v5: bool) -> st.SearchStrategy[Packet]:
    return st.one_of(server_options(v5))


def feed_in_chunks(decoder: Decoder, data: bytes, cuts: list[int]) -> list[Packet]:
    out: list[Packet] = []
    start = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        out += decoder.feed(data[start:cut])
        start = cut
    return out


def cuts_strategy() -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, 10_000), max_size=8)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    v5=st.booleans(),
    data=st.data(),
    cuts=cuts_strategy(),
)
def test_round_trip_client_packets(v5: bool, data: st.DataObject, cuts: list[int]) -> None:
    packets = data.draw(st.lists(client_packets(v5), min_size=1, max_size=4))
    # At most one CONNECT per connection, and it has to be the first packet.
    connect = [p for p in packets if isinstance(p, Connect)][:1]
    packets = connect + [p for p in packets if not isinstance(p, Connect)]
    version = 5 if v5 else 4
    wire = b"".join(encode(p, version) for p in packets)
    decoder = Decoder(max_packet_size=len(wire), version=None if connect else version)
    assert feed_in_chunks(decoder, wire, cuts) == packets
    assert decoder.version == version


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(v5=st.booleans(), data=st.data(), cuts=cuts_strategy())
def test_round_trip_server_packets(v5: bool, data: st.DataObject, cuts: list[int]) -> None:
    packets = data.draw(st.lists(server_packets(v5), min_size=1, max_size=4))
    version = 5 if v5 else 4
    wire = b"".join(encode(p, version) for p in packets)
    decoder = Decoder(version=version, server=False)
    assert feed_in_chunks(decoder, wire, cuts) == packets


@settings(
    max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None
)  # a loaded CI box
@given(v5=st.booleans(), data=st.data())
def test_every_packet_type_round_trips_alone(v5: bool, data: st.DataObject) -> None:
    """One packet of a chosen type per example, so no type is starved by one_of."""
    version = 5 if v5 else 4
    strategies = [(s, True) for s in client_options(v5)]
    strategies += [(s, False) for s in server_options(v5)]
    for strategy, server in strategies:
        packet = data.draw(strategy)
        decoder = Decoder(version=version, server=server)
        assert decoder.feed(encode(packet, version)) == [packet]


def _safe_feed(decoder: Decoder, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            decoder.feed(chunk)
    except MQTTProtocolError as exc:
        # The decoder's safety net for IndexError & co. must never be what caught it.
        assert not exc.message.startswith("undecodable packet"), exc.message


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    version=st.sampled_from([None, 4, 5]),
    server=st.booleans(),
    chunks=st.lists(st.binary(max_size=64), max_size=6),
)
def test_random_bytes_only_raise_protocol_error(
    version: int | None, server: bool, chunks: list[bytes]
) -> None:
    if version is None:
        server = True
    _safe_feed(Decoder(max_packet_size=4096, version=version, server=server), chunks)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    v5=st.booleans(),
    data=st.data(),
    mutations=st.lists(
        st.tuples(st.sampled_from(["flip", "set", "insert", "delete"]), u32, st.integers(0, 255)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_packets_only_raise_protocol_error(
    v5: bool, data: st.DataObject, mutations: list[tuple[str, int, int]]
) -> None:
    server = data.draw(st.booleans())
    packet = data.draw(client_packets(v5) if server else server_packets(v5))
    version = 5 if v5 else 4
    wire = bytearray(encode(packet, version))
    for op, where, value in mutations:
        i = where % (len(wire) + 1)
        if op == "insert":
            wire.insert(i, value)
        elif i < len(wire):
            if op == "flip":
                wire[i] ^= 1 << (value % 8)
            elif op == "set":
                wire[i] = value
            else:
                del wire[i]
    prefix = b""
    if server and not isinstance(packet, Connect):
        prefix = encode(Connect(protocol_level=version), version)
    decoder = Decoder(version=None if server else version, server=server)
    _safe_feed(decoder, [prefix + bytes(wire[: len(wire) // 2]), bytes(wire[len(wire) // 2 :])])
