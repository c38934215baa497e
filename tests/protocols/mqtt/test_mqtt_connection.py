"""The sans-io connection state machine and position tracking, with bytes and clock values only."""

from __future__ import annotations

from bridge.position import Position
from protocols.mqtt.codec import Decoder, encode, prepare_publish
from protocols.mqtt.connection import (
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
from protocols.mqtt.packets import (
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
from protocols.mqtt.subscriptions import Tracker


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
