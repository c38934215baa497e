"""The sans-io connection state machine and position tracking, with bytes and clock values only."""

from __future__ import annotations

from bridge.model.position import Position
from protocols.mqtt.subscriptions import Tracker
from protocols.mqtt.wire.codec import Decoder, encode, prepare_publish
from protocols.mqtt.wire.connection import (
    Acknowledged,
    Connection,
    ConnectReceived,
    DisconnectReceived,
    Limits,
    ProtocolViolation,
    PublishReceived,
    State,
    SubscribeReceived,
)
from protocols.mqtt.wire.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Subscription,
)


def connected(
    version: int = 5, limits: Limits | None = None, **props
) -> tuple[Connection, Decoder]:
    conn = Connection(limits or Limits())
    events = conn.receive(
        encode(
            Connect(
                protocol_level=version, client_id="c", keepalive=10, properties=Properties(**props)
            ),
            version,
        ),
        now=100.0,
    )
    assert isinstance(events[0], ConnectReceived)
    conn.accept(False)
    client = Decoder(version=version, server=False)
    assert isinstance(client.feed(conn.data_to_send())[0], Connack)
    return conn, client


def test_qos2_inbound_is_exactly_once_and_acknowledged_only_when_told():
    conn, client = connected()
    publish = Publish("a/b", b"x", qos=2, packet_id=7)
    [event] = conn.receive(encode(publish, 5), 101.0)
    assert isinstance(event, PublishReceived) and event.topic == "a/b"
    assert conn.data_to_send() == b""  # nothing before Kafka acknowledged
    assert conn.receive(encode(Publish("a/b", b"x", qos=2, packet_id=7, dup=True), 5), 101.1) == []
    conn.publish_done(event.publish)
    assert client.feed(conn.data_to_send()) == [Pubrec(7)]
    # the PUBREC got lost; the client re-sends: re-acknowledged, not produced again
    assert conn.receive(encode(Publish("a/b", b"x", qos=2, packet_id=7, dup=True), 5), 102.0) == []
    assert client.feed(conn.data_to_send()) == [Pubrec(7)]
    assert conn.receive(encode(Pubrel(7), 5), 102.1) == []
    assert client.feed(conn.data_to_send()) == [Pubcomp(7)]
    # the id is free again: a new message with it is a new message
    [again] = conn.receive(encode(Publish("a/b", b"y", qos=2, packet_id=7), 5), 103.0)
    assert isinstance(again, PublishReceived)


def test_negative_acknowledgements_carry_the_reason_on_mqtt5():
    conn, client = connected()
    [event] = conn.receive(encode(Publish("a", b"", qos=1, packet_id=3), 5), 101.0)
    conn.publish_done(event.publish, 0x87, "no")
    [ack] = client.feed(conn.data_to_send())
    assert (
        isinstance(ack, Puback) and ack.reason_code == 0x87 and ack.properties.reason_string == "no"
    )


def test_receive_maximum_exceeded_is_a_protocol_violation():
    conn, client = connected(limits=Limits(receive_maximum=2))
    for pid in (1, 2):
        conn.receive(encode(Publish("a", b"", qos=1, packet_id=pid), 5), 101.0)
    [event] = conn.receive(encode(Publish("a", b"", qos=1, packet_id=3), 5), 101.0)
    assert isinstance(event, ProtocolViolation) and event.reason_code == 0x93
    assert client.feed(conn.data_to_send())[-1].reason_code == 0x93
    assert conn.state is State.CLOSED


def test_unknown_topic_alias_is_refused():
    conn, _client = connected()
    [event] = conn.receive(encode(Publish("", b"", properties=Properties(topic_alias=5)), 5), 101.0)
    assert isinstance(event, ProtocolViolation) and event.reason_code == 0x94


def test_outbound_flow_control_and_the_qos2_handshake():
    conn, client = connected(receive_maximum=1)
    q2 = prepare_publish("t", b"m", qos=2, version=5)
    assert conn.deliver(q2, 2, token="first")
    assert conn.deliver(q2, 2, token="second")  # queued: the client takes one at a time
    [first] = client.feed(conn.data_to_send())
    assert isinstance(first, Publish) and first.qos == 2
    [event] = conn.receive(encode(Pubrec(first.packet_id), 5), 101.0)
    assert event == Acknowledged("first")  # PUBREC: the client owns it now
    assert client.feed(conn.data_to_send()) == [Pubrel(first.packet_id)]
    assert [o.token for o in conn.unacknowledged()] == ["second"]  # counts until PUBCOMP
    conn.receive(encode(Pubcomp(first.packet_id), 5), 101.5)
    [second] = client.feed(conn.data_to_send())
    assert isinstance(second, Publish) and second.qos == 2


def test_client_maximum_packet_size_drops_what_does_not_fit():
    conn, client = connected(maximum_packet_size=50)
    conn.deliver(prepare_publish("t", b"x" * 100, qos=0, version=5), 0)
    conn.deliver(prepare_publish("t", b"ok", qos=0, version=5), 0)
    assert [p.payload for p in client.feed(conn.data_to_send())] == [b"ok"]


def test_keepalive_deadline_and_ping():
    conn, client = connected()
    assert conn.deadline() == 100.0 + 15.0
    conn.receive(encode(Pingreq(), 5), 110.0)
    assert client.feed(conn.data_to_send()) == [Pingresp()]
    assert conn.deadline() == 110.0 + 15.0


def test_packets_pipelined_behind_connect_wait_for_the_connack():
    conn = Connection()
    data = encode(Connect(protocol_level=5, client_id="c"), 5) + encode(
        Subscribe(1, (Subscription("a/#", 1),)), 5
    )
    events = conn.receive(data, 1.0)
    assert [type(e) for e in events] == [ConnectReceived, SubscribeReceived]


def test_disconnect_and_protocol_errors_before_connect():
    conn, _ = connected()
    [event] = conn.receive(encode(Disconnect(0x04), 5), 101.0)
    assert isinstance(event, DisconnectReceived) and event.disconnect.reason_code == 0x04
    fresh = Connection()
    [violation] = fresh.receive(b"\x30\x03\x00\x01a", 1.0)  # PUBLISH before CONNECT
    assert isinstance(violation, ProtocolViolation)


def test_tracker_never_saves_a_position_past_an_unacknowledged_delivery():
    tracker = Tracker(read={0: 10})
    tracker.advance(Position({0: 11}))
    tracker.sent(0, 10)
    tracker.advance(Position({0: 12}))
    tracker.sent(0, 11)
    tracker.advance(Position({0: 13}))  # offset 12 matched nothing
    assert tracker.saved() == {0: 10}
    tracker.acked(0, 11)  # out of order
    assert tracker.saved() == {0: 10}
    assert tracker.saved_acked() == {0: [11]}  # skipped on replay, never re-sent
    tracker.acked(0, 10)
    assert tracker.saved() == {0: 13}
    assert tracker.saved_acked() == {}


def _resolved(client: Decoder, data: bytes, aliases: dict[int, str]) -> list[tuple[str, int, str]]:
    """(topic name on the wire, alias, topic the client resolves) per PUBLISH, as a client would."""
    out = []
    for packet in client.feed(data):
        assert isinstance(packet, Publish)
        alias = packet.properties.topic_alias
        if alias is not None and packet.topic:
            aliases[alias] = packet.topic
        out.append((packet.topic, alias, aliases[alias] if alias else packet.topic))
    return out


def test_outbound_topic_aliases_set_then_used_and_reassigned_least_recently_used_first():
    conn, client = connected(topic_alias_maximum=2)
    aliases: dict[int, str] = {}
    for topic in ("a/1", "a/1", "a/2", "a/3", "a/2", "a/1"):
        conn.deliver(prepare_publish(topic, b"p", qos=0, version=5), 0)
    assert _resolved(client, conn.data_to_send(), aliases) == [
        ("a/1", 1, "a/1"),  # first of a topic: name + alias
        ("", 1, "a/1"),  # then the alias alone
        ("a/2", 2, "a/2"),
        ("a/3", 1, "a/3"),  # both in use: a/1 (least recently used) gives up alias 1
        ("", 2, "a/2"),
        ("a/1", 1, "a/1"),  # a/3 was least recently used now
    ]
    assert max(aliases) <= 2  # never above the client's Topic Alias Maximum


def test_no_outbound_aliases_unless_the_client_allows_them_and_we_do():
    for conn, client in (
        connected(),  # MQTT 5 client without Topic Alias Maximum
        connected(version=4),
        connected(limits=Limits(outbound_topic_aliases=0), topic_alias_maximum=10),
    ):
        for _ in range(2):
            conn.deliver(prepare_publish("a/b", b"p", qos=1, version=conn.version), 1)
        packets = client.feed(conn.data_to_send())
        assert [(p.topic, p.properties.topic_alias) for p in packets] == [("a/b", None)] * 2


def test_our_alias_maximum_caps_the_clients():
    conn, client = connected(limits=Limits(outbound_topic_aliases=1), topic_alias_maximum=100)
    for topic in ("x", "y", "x"):
        conn.deliver(prepare_publish(topic, b"p", qos=0, version=5), 0)
    assert _resolved(client, conn.data_to_send(), {}) == [
        ("x", 1, "x"),
        ("y", 1, "y"),
        ("x", 1, "x"),
    ]


def test_a_publish_too_big_to_send_sets_no_alias():
    conn, client = connected(topic_alias_maximum=5, maximum_packet_size=40)
    conn.deliver(prepare_publish("a/b", b"x" * 100, qos=0, version=5), 0)  # dropped
    conn.deliver(prepare_publish("a/b", b"ok", qos=0, version=5), 0)
    assert _resolved(client, conn.data_to_send(), {}) == [("a/b", 1, "a/b")]


def test_held_back_deliveries_get_their_alias_when_sent_and_a_reconnect_starts_afresh():
    conn, client = connected(topic_alias_maximum=5, receive_maximum=1)
    q1 = prepare_publish("s/1", b"m", qos=1, version=5)
    conn.deliver(q1, 1, token="first")
    conn.deliver(q1, 1, token="second")  # held back by the receive maximum
    [first] = client.feed(conn.data_to_send())
    assert (first.topic, first.properties.topic_alias) == ("s/1", 1)
    conn.receive(encode(Puback(first.packet_id), 5), 101.0)
    [second] = client.feed(conn.data_to_send())
    assert (second.topic, second.properties.topic_alias) == ("", 1)
    # The client goes away without acknowledging "second"; the new connection re-sends it
    # (DUP, same packet id): its aliases are new, so the topic name travels again.
    again, client2 = connected(topic_alias_maximum=5)
    again.deliver(q1, 1, token="second", dup=True, packet_id=second.packet_id)
    [resent] = client2.feed(again.data_to_send())
    assert (resent.topic, resent.properties.topic_alias, resent.dup) == ("s/1", 1, True)
    assert resent.packet_id == second.packet_id


def test_the_written_puback_is_what_the_encoder_makes_on_both_versions():
    for version in (4, 5):
        conn, client = connected(version=version)
        publish = Publish("a/b", b"x", qos=1, packet_id=0x1234)
        [event] = conn.receive(encode(publish, version), 101.0)
        conn.publish_done(event.publish)
        assert conn.data_to_send() == encode(Puback(0x1234), version)
        [event] = conn.receive(encode(Publish("a/b", b"x", qos=1, packet_id=9), version), 102.0)
        conn.publish_done(event.publish, 0x87, "no")  # a refusal still goes through the encoder
        assert client.feed(conn.data_to_send())[0].packet_id == 9


def test_a_redelivery_on_a_reserved_id_frees_the_id_once_acknowledged():
    """A session restored with QoS 1 and QoS 2 deliveries unacknowledged reserves their packet
    ids; once the redelivery on that id is acknowledged, the id is free for new messages again
    (it stayed reserved after a PUBACK, one id lost per redelivery until the session ended)."""
    conn, client = connected()
    conn.reserved_ids.update({7, 8})
    assert conn.deliver(prepare_publish("t", b"a", qos=1, version=5), 1, "a", dup=True, packet_id=7)
    assert conn.deliver(prepare_publish("t", b"b", qos=2, version=5), 2, "b", dup=True, packet_id=8)
    first, second = client.feed(conn.data_to_send())
    assert (first.packet_id, first.dup, second.packet_id) == (7, True, 8)
    assert conn.receive(encode(Puback(7), 5), 101.0) == [Acknowledged("a")]
    assert 7 not in conn.reserved_ids
    conn.receive(encode(Pubrec(8), 5), 101.0)
    client.feed(conn.data_to_send())  # the PUBREL
    conn.receive(encode(Pubcomp(8), 5), 101.5)
    assert not conn.reserved_ids
