"""Persistent sessions in Kafka: missed messages after a reconnect, a restart of the bridge, on
another instance; takeover (also across instances); expiry; wills; keepalive."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from harness import BridgeProcess, free_port
from mqtt_support import bridge_config, catch_all_routes, mqtt_port, unique

from bridge.model.message import Message
from bridge.model.position import Position
from protocols.mqtt.wire.codec import Decoder, encode
from protocols.mqtt.wire.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    Puback,
    Publish,
    Subscribe,
)
from protocols.mqtt.wire.packets import Subscription as SubscriptionOption


def status_will(prefix: str, name: str, delay: int = 0) -> dict:
    """paho's will arguments: ``name`` to ``{prefix}/status/{name}``, QoS 1, MQTT 5 will delay."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties as PahoProperties

    props = PahoProperties(PacketTypes.WILLMESSAGE)
    if delay:
        props.WillDelayInterval = delay
    return {"topic": f"{prefix}/status/{name}", "payload": name.encode(), "qos": 1,
            "properties": props}  # fmt: skip


async def test_persistent_session_gets_what_it_missed_mqtt311(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    phone = paho(port, "phone-311", version=4, clean=False)
    present, _, _ = await phone.connect()
    assert not present
    await phone.subscribe(f"{prefix}/stadium/+/score", qos=1)
    await phone.disconnect()
    board = paho(port)
    await board.connect()
    for n in range(5):
        await board.publish(f"{prefix}/stadium/m1/score", f"{n}-0", qos=1)
    phone = paho(port, "phone-311", version=4, clean=False)
    present, _, _ = await phone.connect()
    assert present
    assert [m.payload for m in await phone.get_many(5)] == [b"0-0", b"1-0", b"2-0", b"3-0", b"4-0"]
    await phone.nothing_more(0.5)


async def test_unacknowledged_are_resent_with_dup_and_acknowledged_never(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix), session_flush_s=0.1))
    phone = paho(port, "phone-acks", manual_ack=True)
    await phone.connect(session_expiry=600)
    await phone.subscribe(f"{prefix}/feed", qos=1)
    board = paho(port)
    await board.connect()
    for n in range(4):
        await board.publish(f"{prefix}/feed", str(n), qos=1)
    got = await phone.get_many(4)
    phone.client.ack(got[0].mid, 1)
    phone.client.ack(got[2].mid, 1)  # out of order: 1 and 3 stay unacknowledged
    await asyncio.sleep(0.5)
    await phone.drop()
    phone = paho(port, "phone-acks", clean=False)
    present, _, _ = await phone.connect(session_expiry=600)
    assert present
    again = await phone.get_many(2)
    assert [(m.payload, m.dup) for m in again] == [(b"1", True), (b"3", True)]
    await phone.nothing_more(0.7)


async def test_a_record_dispatched_while_the_connection_closes_is_not_skipped(mqtt_bridge, paho):
    """The hub keeps dispatching until a closing client's subscriptions are detached; such a
    record must not move the saved position (it did, and a bridge drain lost one record)."""
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix), session_flush_s=0.1)
    frontend = bridge.frontend("mqtt")
    port = mqtt_port(bridge)
    phone = paho(port, "phone-closing")
    await phone.connect(session_expiry=600)
    await phone.subscribe(f"{prefix}/feed", qos=1)
    board = paho(port)
    await board.connect()
    await board.publish(f"{prefix}/feed", "0", qos=1)
    first = await phone.get()
    assert first.payload == b"0"
    await asyncio.sleep(0.3)  # the acknowledgement of "0" reaches the bridge
    client = frontend.clients["phone-closing"]
    (subscription,) = client.subscriptions.values()
    (topic,) = subscription.trackers
    _, hub = bridge.kafka
    feed = hub.feeds()[topic]
    (partition,) = feed.partitions
    next_offset = feed.position[partition]
    # The connection closes; in the same turn of the loop the hub hands it the next record.
    client.close()
    subscription.deliver(
        Message(topic, None, b"1", partition=partition, offset=next_offset),
        Position({partition: next_offset + 1}),
    )
    await phone.wait_disconnected()
    await board.publish(f"{prefix}/feed", "1", qos=1)  # lands at ``next_offset``
    phone = paho(port, "phone-closing", clean=False)
    present, _, _ = await phone.connect(session_expiry=600)
    assert present
    assert (await phone.get()).payload == b"1"


async def test_clean_start_discards_the_session(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    phone = paho(port, "phone-clean")
    await phone.connect(session_expiry=600)
    await phone.subscribe(f"{prefix}/x", qos=1)
    await phone.disconnect()
    phone = paho(port, "phone-clean", clean=True)
    present, _, _ = await phone.connect(session_expiry=600)
    assert not present
    board = paho(port)
    await board.connect()
    await board.publish(f"{prefix}/x", "nobody", qos=1)
    await phone.nothing_more(0.5)


async def test_session_expiry_removes_the_session(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    phone = paho(port, "phone-expiring")
    await phone.connect(session_expiry=1)
    await phone.subscribe(f"{prefix}/x", qos=1)
    await phone.disconnect()
    await asyncio.sleep(1.5)
    phone = paho(port, "phone-expiring", clean=False)
    present, _, _ = await phone.connect(session_expiry=60)
    assert not present


async def test_expired_sessions_are_deleted_from_kafka(mqtt_bridge, paho, kafka_records):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix), expiry_sweep_s=0.5))
    client_id = unique("short-lived-")
    phone = paho(port, client_id)
    await phone.connect(session_expiry=1)
    await phone.subscribe(f"{prefix}/x", qos=1)
    await phone.disconnect()
    await asyncio.sleep(3.0)  # the expiry passes, then a sweep runs
    records = await kafka_records("edgebridge.mqtt.sessions", 100_000, timeout=3.0)
    mine = [r for r in records if r.key == client_id.encode()]
    assert mine and mine[0].value is not None  # the session was stored...
    assert mine[-1].value is None  # ...and its expiry wrote the tombstone


async def test_takeover_on_the_same_instance(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    first = paho(port, "dup-id")
    await first.connect(session_expiry=60)
    await first.subscribe(f"{prefix}/t", qos=1)
    second = paho(port, "dup-id", clean=False)
    present, _, _ = await second.connect(session_expiry=60)
    assert present
    assert await first.wait_disconnected() == 0x8E  # session taken over
    board = paho(port)
    await board.connect()
    await board.publish(f"{prefix}/t", "to-the-new-one", qos=1)
    assert (await second.get()).payload == b"to-the-new-one"


async def test_will_is_published_when_the_connection_dies(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    watcher = paho(port)
    await watcher.connect()
    await watcher.subscribe(f"{prefix}/status/+", qos=1)
    board = paho(port, "board-w")
    await board.connect(will={"topic": f"{prefix}/status/board-w", "payload": b"offline", "qos": 1})
    polite = paho(port, "board-p")
    await polite.connect(
        will={"topic": f"{prefix}/status/board-p", "payload": b"offline", "qos": 1}
    )
    await polite.disconnect()  # a normal DISCONNECT discards the will
    await board.drop()
    message = await watcher.get()
    assert (message.topic, message.payload) == (f"{prefix}/status/board-w", b"offline")
    await watcher.nothing_more(0.5)


async def test_a_disconnect_sent_while_connect_is_still_saving_discards_the_will(mqtt_bridge, paho):
    """A persistent client that disconnects (and closes its socket) at once: the DISCONNECT
    arrives while the bridge is still saving the new session, and must still discard the will
    (it was skipped once the socket had closed, and the will published)."""
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    watcher = paho(port)
    await watcher.connect()
    await watcher.subscribe(f"{prefix}/status/+", qos=1)
    for n in range(3):
        quick = paho(port, f"quick-{n}")
        will = {"topic": f"{prefix}/status/quick-{n}", "payload": b"offline", "qos": 1}
        await quick.connect(session_expiry=60, will=will)
        await quick.disconnect()
    await watcher.nothing_more(1.0)


async def test_a_session_taken_over_publishes_the_old_will_on_mqtt5_only(mqtt_bridge, paho):
    """MQTT 5 (3.1.4-3): the connection taken over gets 0x8E and its will is published, unless
    it has a will delay (the new connection voids it); MQTT 3.1.1 lists no will for a
    takeover."""
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    watcher = paho(port)
    await watcher.connect()
    await watcher.subscribe(f"{prefix}/status/+", qos=1)

    old5 = paho(port, "t5")
    await old5.connect(session_expiry=60, will=status_will(prefix, "t5"))
    delayed = paho(port, "t5d")
    await delayed.connect(session_expiry=60, will=status_will(prefix, "t5d", delay=2))
    old311 = paho(port, "t311", version=4)
    await old311.connect(will={"topic": f"{prefix}/status/t311", "payload": b"t311", "qos": 1})
    for old, client_id, version in ((old5, "t5", 5), (delayed, "t5d", 5), (old311, "t311", 4)):
        new = paho(port, client_id, version=version)
        await (new.connect(session_expiry=60) if version == 5 else new.connect())
        reason = await old.wait_disconnected()
        await asyncio.to_thread(old.client.loop_stop)  # no reconnect (paho's loop would)
        assert reason == 0x8E or version == 4  # 3.1.1 has no reason: the socket just closes
    message = await watcher.get()
    assert (message.topic, message.payload) == (f"{prefix}/status/t5", b"t5")
    await watcher.nothing_more(2 + 1.0)  # past the delayed one's delay: still nothing


async def test_will_delay_is_cancelled_by_reconnecting(mqtt_bridge, paho):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    watcher = paho(port)
    await watcher.connect()
    await watcher.subscribe(f"{prefix}/status/+", qos=1)
    will_props = Properties(PacketTypes.WILLMESSAGE)
    will_props.WillDelayInterval = 2
    will = {
        "topic": f"{prefix}/status/b",
        "payload": b"offline",
        "qos": 1,
        "properties": will_props,
    }
    board = paho(port, "board-delay")
    await board.connect(session_expiry=60, will=will)
    await board.drop()
    board = paho(port, "board-delay", clean=False)
    await board.connect(session_expiry=60, will=will)
    await watcher.nothing_more(3.0)  # the delay passed: no will, the client came back
    await board.drop()
    message = await watcher.get()  # now it stays away: the will comes after the delay
    assert message.payload == b"offline"


async def test_keepalive_is_enforced(mqtt_bridge):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Connect(protocol_level=5, client_id="sleepy", keepalive=1), 5))
    await writer.drain()
    decoder = Decoder(version=5, server=False)
    packets = []
    while True:  # the CONNACK, then silence from us, then the server gives up on us
        data = await asyncio.wait_for(reader.read(1024), 15)
        if not data:
            break
        packets.extend(decoder.feed(data))
    assert isinstance(packets[-1], Disconnect) and packets[-1].reason_code == 0x8D
    writer.close()


# -- several bridge processes on the session broker --------------------------------------------


@pytest.fixture
def bridge_processes(tmp_path, kafka_bootstrap):
    made: list[BridgeProcess] = []

    def make(routes: str, name: str, workers: int = 2, **options) -> tuple[BridgeProcess, int]:
        port = free_port()
        config = tmp_path / f"{name}.toml"
        text = bridge_config(
            routes, mqtt_port=port, http_port=free_port(), session_flush_s=0.1, **options
        )
        config.write_text(text.replace('log_level = "warning"', 'log_level = "info"'))
        process = BridgeProcess(config, kafka_bootstrap, env={"EDGEBRIDGE_WORKERS": str(workers)})
        made.append(process)
        return process, port

    yield make
    for process in made:
        process.stop()


async def test_missed_messages_survive_a_restart_of_the_bridge(bridge_processes, paho):
    prefix = unique()
    process, port = bridge_processes(catch_all_routes(prefix), "restart")
    await process.astart(port)
    phone = paho(port, "phone-restart")
    await phone.connect(session_expiry=3600)
    await phone.subscribe(f"{prefix}/stadium/+/score", qos=1)
    board = paho(port)
    await board.connect()
    await board.publish(f"{prefix}/stadium/m1/score", "before", qos=1)
    assert (await phone.get()).payload == b"before"
    await phone.disconnect()
    await board.publish(f"{prefix}/stadium/m1/score", "missed-1", qos=1)
    await board.close()
    await asyncio.to_thread(process.stop)  # every bridge is down
    await process.astart(port)
    board = paho(port)
    await board.connect()
    await board.publish(f"{prefix}/stadium/m1/score", "missed-2", qos=1)
    phone = paho(port, "phone-restart", clean=False)
    present, _, _ = await phone.connect(session_expiry=3600)
    assert present
    assert [m.payload for m in await phone.get_many(2)] == [b"missed-1", b"missed-2"]
    await board.publish(f"{prefix}/stadium/m1/score", "live", qos=1)
    assert (await phone.get()).payload == b"live"
    await phone.nothing_more(0.5)


async def test_session_resumes_on_another_instance_and_takeover_crosses_instances(
    bridge_processes, paho
):
    prefix = unique()
    a, port_a = bridge_processes(catch_all_routes(prefix), "a")
    b, port_b = bridge_processes(catch_all_routes(prefix), "b")
    await a.astart(port_a)
    await b.astart(port_b)
    phone = paho(port_a, "phone-roaming")
    await phone.connect(session_expiry=3600)
    await phone.subscribe(f"{prefix}/stadium/+/score", qos=1)
    await phone.disconnect()
    board = paho(port_a)
    await board.connect()
    for n in range(3):
        await board.publish(f"{prefix}/stadium/m9/score", f"away-{n}", qos=1)
    roamed = paho(port_b, "phone-roaming", clean=False)
    present, _, _ = await roamed.connect(session_expiry=3600)
    assert present
    assert [m.payload for m in await roamed.get_many(3)] == [b"away-0", b"away-1", b"away-2"]
    await asyncio.sleep(1.0)  # paho sends each PUBACK after its callback: let them reach B
    # the same client id on instance A takes the session over from B: B says 0x8E
    back = paho(port_a, "phone-roaming", clean=False)
    present, _, _ = await back.connect(session_expiry=3600)
    assert present
    assert await roamed.wait_disconnected() == 0x8E
    await board.publish(f"{prefix}/stadium/m9/score", "after", qos=1)
    assert (await back.get()).payload == b"after"  # nothing acknowledged came again
    await back.nothing_more(0.5)


async def test_shared_subscription_across_instances_delivers_each_message_once(
    bridge_processes, paho
):
    prefix = unique()
    routes = (
        catch_all_routes(prefix)
        + f"""
[kafka.topics.{prefix}-any]
partitions = 4
"""
    )
    a, port_a = bridge_processes(routes, "share-a", workers=1)
    b, port_b = bridge_processes(routes, "share-b", workers=1)
    await a.astart(port_a)
    await b.astart(port_b)
    members = [paho(port) for port in (port_a, port_a, port_b, port_b)]
    for member in members:
        await member.connect()
        assert await member.subscribe(f"$share/crew/{prefix}/jobs/+", qos=1) == [1]
    await asyncio.sleep(2.0)  # membership records travel through the sessions table
    board = paho(port_a)
    await board.connect()
    for n in range(40):
        await board.publish(f"{prefix}/jobs/{n}", str(n), qos=1)
    await asyncio.sleep(2.0)
    per_member = [sorted(int(m.payload) for m in list(member.messages.queue)) for member in members]
    everything = sorted(n for got in per_member for n in got)
    assert everything == list(range(40)), per_member  # once each, in the whole cluster
    assert per_member[0] + per_member[1] and per_member[2] + per_member[3]  # both instances serve


async def test_a_shared_group_whose_members_were_all_away_gets_what_was_published_meanwhile(
    bridge_processes, paho
):
    """The group's progress is in the sessions table: its only (persistent) member leaves, two
    jobs are published, the bridge restarts, the member comes back: the group resumes where it
    stopped and gets both, and not the one it had before."""
    prefix = unique()
    process, port = bridge_processes(catch_all_routes(prefix), "share-away", workers=1)
    await process.astart(port)
    shared = f"$share/crew/{prefix}/jobs/+"
    worker = paho(port, "crew-1")
    await worker.connect(session_expiry=600)
    assert await worker.subscribe(shared, qos=1) == [1]
    board = paho(port)
    await board.connect()
    await board.publish(f"{prefix}/jobs/0", "0", qos=1)
    assert (await worker.get()).payload == b"0"
    await worker.disconnect()  # the whole group is away now
    for n in (1, 2):
        await board.publish(f"{prefix}/jobs/{n}", str(n), qos=1)
    await board.close()
    await asyncio.to_thread(process.stop)
    await process.astart(port)
    worker = paho(port, "crew-1", clean=False)
    present, _, _ = await worker.connect(session_expiry=600)
    assert present
    got = sorted(m.payload for m in await worker.get_many(2))
    assert got == [b"1", b"2"]
    await worker.nothing_more(1.0)


# -- a resume storm: many sessions back at once -------------------------------------------------


class RawSession:
    """A bare MQTT 5 persistent session (QoS 1, acknowledges everything) on the test's loop."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port, self.client_id = port, client_id
        self.payloads: list[bytes] = []
        self.dups: list[bool] = []
        self.present: bool | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def connect(self, topic_filter: str | None = None) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer = writer
        props = Properties(session_expiry_interval=600)
        connect = Connect(protocol_level=5, client_id=self.client_id, clean_start=False)
        writer.write(encode(replace(connect, properties=props), 5))
        decoder = Decoder(version=5, server=False)
        connack = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read(reader, decoder, connack))
        self.present = await asyncio.wait_for(connack, 15)
        if topic_filter is not None:
            writer.write(encode(Subscribe(1, (SubscriptionOption(topic_filter, qos=1),)), 5))

    async def _read(self, reader, decoder, connack) -> None:
        while data := await reader.read(65536):
            for packet in decoder.feed(data):
                if isinstance(packet, Connack):
                    connack.set_result(packet.session_present)
                elif isinstance(packet, Publish):
                    self.payloads.append(packet.payload)
                    self.dups.append(packet.dup)
                    assert self._writer is not None and packet.packet_id is not None
                    self._writer.write(encode(Puback(packet.packet_id), 5))

    def firsts(self) -> list[bytes]:
        """Payloads in order of first arrival; a repeat must be a QoS 1 re-send (DUP)."""
        seen: list[bytes] = []
        for payload, dup in zip(self.payloads, self.dups, strict=True):
            if payload in seen:
                assert dup, f"{self.client_id}: {payload!r} twice without DUP"
            else:
                seen.append(payload)
        return seen

    async def wait_for(self, count: int) -> None:
        for _ in range(300):
            if len(set(self.payloads)) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.client_id}: {len(self.payloads)} of {count}")

    def drop(self) -> None:
        assert self._writer is not None and self._reader_task is not None
        self._writer.transport.abort()
        self._reader_task.cancel()


@pytest.mark.parametrize("cache_records", [10000, 3], ids=["from-cache", "from-kafka"])
async def test_many_sessions_back_at_once_each_get_exactly_what_they_missed(
    mqtt_bridge, paho, cache_records
):
    """Two groups leave at different positions while records flow; all return at the same
    moment; each session gets exactly the records after its own position, once (all earlier
    deliveries were acknowledged), served by the shared catch-up (cache or one Kafka reader)."""
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix), session_flush_s=0.1)
    _, hub = bridge.kafka
    hub.settings = replace(hub.settings, cache_records=cache_records)  # before the feed opens
    port = mqtt_port(bridge)
    sessions = [RawSession(port, f"{prefix}-s{i}") for i in range(40)]
    await asyncio.gather(*(s.connect(f"{prefix}/feed") for s in sessions))
    assert not any(s.present for s in sessions)
    await asyncio.sleep(0.3)  # SUBACKs
    board = paho(port)
    await board.connect()

    async def publish(first: int, count: int) -> None:
        for n in range(first, first + count):
            await board.publish(f"{prefix}/feed", str(n), qos=1)

    await publish(0, 5)
    await asyncio.gather(*(s.wait_for(5) for s in sessions))
    await asyncio.sleep(0.4)  # acknowledged positions saved
    early, late = sessions[:20], sessions[20:]
    for session in early:
        session.drop()
    await publish(5, 5)
    await asyncio.gather(*(s.wait_for(10) for s in late))
    await asyncio.sleep(0.4)
    for session in late:
        session.drop()
    await publish(10, 5)
    await asyncio.sleep(0.3)
    await asyncio.gather(*(s.connect() for s in sessions))
    assert all(s.present for s in sessions)
    await publish(15, 3)
    await asyncio.gather(*(s.wait_for(18) for s in early))
    await asyncio.gather(*(s.wait_for(18) for s in late))
    await asyncio.sleep(0.5)
    want = [str(n).encode() for n in range(18)]
    assert [s.firsts() for s in sessions] == [want] * 40
    # Everything was acknowledged well before each drop: nothing needed re-sending.
    assert sum(len(s.payloads) for s in sessions) <= 40 * 18 + 2
    for session in sessions:
        session.drop()


async def test_position_saves_are_capped_per_flush_and_reach_every_session(
    mqtt_bridge, paho, monkeypatch
):
    """Every instance reads every session record, so a flush saves at most a few sessions;
    the longest-waiting go first, so every session's acknowledged position is saved soon."""
    from protocols.mqtt import sessions as session_manager

    monkeypatch.setattr(session_manager, "MAX_SAVES_PER_FLUSH", 3)
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix), session_flush_s=0.1)
    manager = bridge.frontend("mqtt").sessions
    per_flush: list[int] = []
    saves = 0
    real_save, real_flush = manager.save, manager.flush_dirty

    async def save(client, left=False):
        nonlocal saves
        saves += 1
        await real_save(client, left)

    async def flush_dirty():
        nonlocal saves
        saves = 0
        await real_flush()
        per_flush.append(saves)

    monkeypatch.setattr(manager, "save", save)
    monkeypatch.setattr(manager, "flush_dirty", flush_dirty)
    port = mqtt_port(bridge)
    sessions = [RawSession(port, f"{prefix}-c{i}") for i in range(8)]
    await asyncio.gather(*(s.connect(f"{prefix}/feed") for s in sessions))
    await asyncio.sleep(0.3)
    board = paho(port)
    await board.connect()
    for n in range(2):
        await board.publish(f"{prefix}/feed", str(n), qos=1)
    await asyncio.gather(*(s.wait_for(2) for s in sessions))
    for _ in range(100):  # every session's saved position reaches the acknowledged records
        states = [manager.load(s.client_id) for s in sessions]
        saved = [
            sum(sum(parts.values()) for parts in sub.positions.values())
            for state in states
            if state is not None
            for sub in state.subscriptions.values()
        ]
        if len(saved) == 8 and min(saved) >= 2:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"saved positions {saved}")
    assert max(per_flush) == 3  # capped, and the cap was reached
    for session in sessions:
        session.drop()


async def test_delayed_will_survives_its_instance_and_stays_void_after_a_reconnect(
    bridge_processes, paho
):
    """A delayed will is in the sessions table: if its instance is SIGKILLed during the delay,
    another instance publishes it (once); if the client came back on another instance, nobody
    does."""
    prefix = unique()
    a, port_a = bridge_processes(catch_all_routes(prefix), "a", workers=1)
    b, port_b = bridge_processes(catch_all_routes(prefix), "b", workers=1)
    await a.astart(port_a)
    await b.astart(port_b)
    watcher = paho(port_b)
    await watcher.connect()
    await watcher.subscribe(f"{prefix}/status/+", qos=1)

    roamer = paho(port_a, "roamer")
    await roamer.connect(session_expiry=60, will=status_will(prefix, "roamer", delay=2))
    await roamer.drop()
    await asyncio.sleep(0.5)
    roamer = paho(port_b, "roamer", clean=False)
    await roamer.connect(session_expiry=60)  # back, elsewhere, within the delay
    await watcher.nothing_more(2 + 5 + 2.0)  # delay + orphan grace + slack: the will is void

    board = paho(port_a, "board")
    await board.connect(session_expiry=60, will=status_will(prefix, "board", delay=2))
    await board.drop()
    await asyncio.sleep(1.0)  # A has seen the drop and stored the will
    a.kill()
    message = await watcher.get(timeout=30)
    assert (message.topic, message.payload) == (f"{prefix}/status/board", b"board")
    await watcher.nothing_more(2.0)
    assert "mqtt.will_claimed" in b.logs()


async def test_the_will_of_a_connection_whose_instance_dies_is_published_by_another(
    bridge_processes, paho
):
    """While a client is connected, its will is stored armed: SIGKILL its instance and another
    instance publishes it once the dead one's heartbeat is stale; not the will of a client that
    disconnected normally, nor that of one back on another instance within its will delay."""
    prefix = unique()
    a, port_a = bridge_processes(catch_all_routes(prefix), "a", workers=1, instance_timeout_s=3)
    b, port_b = bridge_processes(catch_all_routes(prefix), "b", workers=1, instance_timeout_s=3)
    await a.astart(port_a)
    await b.astart(port_b)
    watcher = paho(port_b)
    await watcher.connect()
    await watcher.subscribe(f"{prefix}/status/+", qos=1)

    board = paho(port_a, "board")
    await board.connect(session_expiry=60, will=status_will(prefix, "board"))
    quitter = paho(port_a, "quitter")
    await quitter.connect(session_expiry=60, will=status_will(prefix, "quitter"))
    await quitter.disconnect()  # a normal DISCONNECT: its will is gone everywhere
    phone = paho(port_a, "phone")
    await phone.connect(session_expiry=60, will=status_will(prefix, "phone", delay=8))
    await asyncio.sleep(1.0)  # the armed wills are in the sessions table
    await watcher.nothing_more(0.5)  # nothing published while A lives

    a.kill()
    phone = paho(port_b, "phone", clean=False)
    await phone.connect(session_expiry=60)  # back on B within its will delay: its will is void
    message = await watcher.get(timeout=30)
    assert (message.topic, message.payload) == (f"{prefix}/status/board", b"board")
    await watcher.nothing_more(3 + 1 + 8 + 2.0)  # timeout + beat + phone's delay + slack
    assert "mqtt.will_claimed" in b.logs()


async def test_with_two_survivors_the_will_of_a_dead_instance_is_published_once(
    bridge_processes, paho
):
    """Three instances; the one holding a connection with a will is SIGKILLed: both survivors
    see it die and claim, the first claim in the table wins, the will is published once."""
    prefix = unique()
    started = []
    for name in ("a", "b", "c"):
        process, port = bridge_processes(
            catch_all_routes(prefix), name, workers=1, instance_timeout_s=3
        )
        await process.astart(port)
        started.append((process, port))
    (a, port_a), (b, _), (c, port_c) = started
    watcher = paho(port_c)
    await watcher.connect()
    await watcher.subscribe(f"{prefix}/status/+", qos=1)
    board = paho(port_a, "board3")
    will = {"topic": f"{prefix}/status/board3", "payload": b"gone", "qos": 1}
    await board.connect(session_expiry=60, will=will)
    await asyncio.sleep(1.0)  # armed, and seen by b and c
    a.kill()
    message = await watcher.get(timeout=30)
    assert (message.topic, message.payload) == (f"{prefix}/status/board3", b"gone")
    await watcher.nothing_more(5 + 2.0)  # the losing claimer's grace, and some
    claims = b.logs().count("mqtt.will_claimed") + c.logs().count("mqtt.will_claimed")
    assert claims == 1
