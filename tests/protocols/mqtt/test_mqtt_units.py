"""The MQTT ingest, session and will logic against fakes of the small interfaces they take
(protocols/mqtt/ports.py and the Protocols of the connection): no broker, no sockets.

The fake producer implements the ``Produce`` protocol to test *our* logic (which records are
submitted, when, and what the answer waits for); everything end to end runs on the real broker
in the other test modules.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mqtt_support import REPO, bridge_config

from bridge.edge.access import ANONYMOUS
from bridge.edge.record_builder import build_message, resolver
from bridge.model.config import parse_config
from bridge.model.message import Message, Origin
from bridge.model.routing import RouteTable
from protocols.mqtt import records
from protocols.mqtt.ingest import Ingest, PublishRefused, Sender
from protocols.mqtt.instances import Instances
from protocols.mqtt.options import MqttOptions
from protocols.mqtt.retained import RetainedMessages
from protocols.mqtt.session_state import Owner, SessionState, StoredSubscription, owner_key
from protocols.mqtt.sessions import SessionManager
from protocols.mqtt.wills import StoredWill, Wills, will_key
from protocols.mqtt.wire.packets import Connect, Properties, Publish, ReasonCode

RETAINED = "edgebridge.mqtt.retained"
ROUTES = """
[[routes]]
name = "scores"
topic = "u-scores"
key = "{match}"
headers = { venue = "{$client_id}" }
content_type = "application/json"

[routes.mqtt]
topic = "u/stadium/{match}/score"
max_qos = 1

[[routes]]
name = "bets"
topic = "u-bets"
key = "{$body.userId}"
schema = "schemas/bet.json"

[routes.mqtt]
topic = "u/bets"

[[routes]]
name = "any"
topic = "u-any"
key = "{topic}"

[routes.mqtt]
topic = "u/{topic...}"
"""


def route_table() -> RouteTable:
    config = parse_config(bridge_config(ROUTES), REPO / "test-routing.toml", {})
    return RouteTable.from_config(config)


class FakeProducer:
    """Produce: records what is submitted; Kafka's answer comes when the test says so (or at
    once with ``auto``), as record metadata with a partition and an offset."""

    timeout_s = 5.0

    def __init__(self, auto: bool = False) -> None:
        self.auto = auto
        self.submitted: list[tuple[Message, str | None, asyncio.Future[Any]]] = []
        self._offsets: dict[str, int] = {}

    def submit_now(
        self, message: Message, acks: str | None = None, on_done: Any = None
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if on_done is not None:
            future.add_done_callback(on_done)
        self.submitted.append((message, acks, future))
        if self.auto:
            self.acknowledge(len(self.submitted) - 1)
        return future

    async def submit(
        self, message: Message, acks: str | None = None, linger_ms: int = 0, on_done: Any = None
    ) -> asyncio.Future[Any]:
        return self.submit_now(message, acks, on_done)

    def acknowledge(self, index: int) -> None:
        message, _, future = self.submitted[index]
        offset = self._offsets.get(message.topic, 0)
        self._offsets[message.topic] = offset + 1
        future.set_result(SimpleNamespace(topic=message.topic, partition=0, offset=offset))

    def topics(self) -> list[str]:
        return [message.topic for message, _, _ in self.submitted]


class FakeTable:
    """Table: a dict, with every write kept in order (offsets like a one-partition topic)."""

    def __init__(self) -> None:
        self.latest: dict[bytes | None, Message] = {}
        self.writes: list[tuple[bytes, bytes | None]] = []
        self.readers: list[Any] = []  # called with each record, as the hub would (read back)

    def get(self, key: bytes) -> Message | None:
        return self.latest.get(key)

    def items(self) -> list[tuple[bytes | None, Message]]:
        return list(self.latest.items())

    async def put(
        self, key: bytes, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
    ) -> None:
        self.writes.append((key, value))
        record = Message("t", key, value, tuple(headers), partition=0, offset=len(self.writes))
        if value is None:
            self.latest.pop(key, None)
        else:
            self.latest[key] = record
        for reader in self.readers:
            reader(record)

    async def sync(self) -> None:
        return None

    def value(self, key: bytes) -> bytes:
        record = self.latest.get(key)
        assert record is not None and record.value is not None, key
        return record.value


class FakeFeed:
    """ReadBack: the positions asked for."""

    def __init__(self) -> None:
        self.asked: list[dict[int, int]] = []

    async def wait_for(self, position: Any, timeout: float | None = None) -> None:
        self.asked.append(dict(position))


def make_ingest(producer: FakeProducer) -> tuple[Ingest, RetainedMessages]:
    routes = route_table()
    retained = RetainedMessages(FakeTable(), FakeFeed(), RETAINED, routes)
    return Ingest(routes, producer, retained, MqttOptions()), retained


# -- ingest -----------------------------------------------------------------------------------


async def test_a_retained_publish_submits_both_records_before_awaiting_either():
    producer = FakeProducer()
    ingest, retained = make_ingest(producer)
    sender = ingest.sender("board-1", ANONYMOUS, "10.0.0.1:5000")
    made = sender.records(Publish("u/stadium/m1/score", b"{}", 1, True), "u/stadium/m1/score")
    assert made.retained is not None and made.retained.topic == RETAINED
    answered: list[asyncio.Future[Any]] = []
    acks, linger = ingest.acks(made.route, 1)
    assert ingest.submit_now(made, acks, linger, answered.append) is None  # never the hot path
    future = await ingest.submit(made.message, made.retained, acks, linger, answered.append)
    # both handed over, none answered yet: neither waited for the other
    assert producer.topics() == ["u-scores", RETAINED]
    assert [acks for _, acks, _ in producer.submitted] == [None, "all"]
    assert not any(f.done() for _, _, f in producer.submitted)
    producer.acknowledge(0)
    await asyncio.sleep(0)
    assert not future.done()  # the retained table has not acknowledged yet
    producer.acknowledge(1)
    assert await future is None  # both acknowledged
    await asyncio.sleep(0)
    assert answered == [future]
    await retained.settled()  # the read-back a SUBSCRIBE waits for: up to the table's record
    assert retained.feed.asked == [{0: 1}]  # type: ignore[attr-defined]


async def test_a_retained_publish_fails_if_either_record_fails():
    producer = FakeProducer()
    ingest, _ = make_ingest(producer)
    made = ingest.sender("c", ANONYMOUS, None).records(Publish("u/x", b"v", 1, True), "u/x")
    future = await ingest.submit(made.message, made.retained, None)
    producer.acknowledge(0)
    producer.submitted[1][2].set_exception(RuntimeError("not leader"))
    await asyncio.sleep(0)
    assert isinstance(future.exception(), RuntimeError)


async def test_later_publishes_take_the_kept_plan_and_make_what_build_message_makes():
    ingest, _ = make_ingest(FakeProducer())
    sender = ingest.sender("board-2", ANONYMOUS, "10.0.0.2:6000")
    topic = "u/stadium/m9/score"
    props = Properties(content_type="text/plain", user_properties=(("a", "1"),))
    first = sender.records(Publish(topic, b"1", 1, False, properties=props), topic)
    assert ingest.planned == 0
    later = sender.records(Publish(topic, b"2", 0, False), topic)
    assert ingest.planned == 1  # the fast path was taken
    route = first.route
    origin = Origin("mqtt", "board-2", None, "10.0.0.2:6000")
    publish = Publish(topic, b"2", 0, False)
    expected = build_message(
        route,
        {"match": "m9"},
        b"2",
        origin,
        resolver(origin, topic),
        records.publish_headers(publish, topic, "board-2"),
    )
    received_at = dict(route.audit.headers)["received_at"]

    def without_time(message: Message) -> list[tuple[str, bytes]]:
        return [(n, v) for n, v in message.headers if n != received_at]

    assert (later.message.topic, later.message.key) == (expected.topic, expected.key)
    assert without_time(later.message) == without_time(expected)
    assert [n for n, _ in later.message.headers] == [n for n, _ in expected.headers]
    assert later.message.header("venue") == b"board-2"


async def test_a_key_from_the_payload_is_never_planned():
    ingest, _ = make_ingest(FakeProducer())
    sender = ingest.sender("bettor", ANONYMOUS, None)
    bet = '{"userId":"%s","matchId":"m1","team":"home","amount":5}'
    a = sender.records(Publish("u/bets", (bet % "ann").encode(), 1, False), "u/bets")
    b = sender.records(Publish("u/bets", (bet % "bob").encode(), 1, False), "u/bets")
    assert (a.message.key, b.message.key, ingest.planned) == (b"ann", b"bob", 0)


@pytest.mark.parametrize(
    ("topic", "qos", "retain", "payload", "code", "metric"),
    [
        ("elsewhere/x", 0, False, b"", ReasonCode.TOPIC_NAME_INVALID, "no_route"),
        ("u/+/x", 0, False, b"", ReasonCode.TOPIC_NAME_INVALID, "malformed"),
        ("u/stadium/m1/score", 2, False, b"{}", ReasonCode.QOS_NOT_SUPPORTED, "qos_not_supported"),
        ("u/bets", 1, False, b"{}", ReasonCode.PAYLOAD_FORMAT_INVALID, "schema"),
    ],
)
async def test_refused_publishes_say_why(topic, qos, retain, payload, code, metric):
    ingest, _ = make_ingest(FakeProducer())
    sender = ingest.sender("c", ANONYMOUS, None)
    with pytest.raises(PublishRefused) as refused:
        sender.records(Publish(topic, payload, qos, retain), topic)
    assert (refused.value.code, refused.value.metric) == (code, metric)


# -- sessions ---------------------------------------------------------------------------------


@dataclass(eq=False)
class FakeHolder:
    """SessionHolder: a connection as its session sees it."""

    client_id: str
    nonce: str = "n1"
    persistent: bool = True
    expiry: int | None = 600
    closed: bool = False
    session_dirty: bool = False
    taken_over_by: str | None = None
    kicked: list[int] = field(default_factory=list)
    subs: dict[str, StoredSubscription] = field(default_factory=dict)
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> asyncio.Event:
        return self._done

    def kick(self, code: int, reason: str) -> None:
        self.kicked.append(code)
        self.closed = True
        self._done.set()

    def stored_subscriptions(self) -> dict[str, StoredSubscription]:
        return self.subs

    def pubrel_ids(self) -> tuple[list[int], list[int]]:
        return [3], [4]


async def test_a_session_is_owned_saved_resumed_and_released():
    table = FakeTable()
    clients: dict[str, FakeHolder] = {}
    sessions = SessionManager(table, clients)
    phone = FakeHolder("phone", subs={"s/#": StoredSubscription("s/#", 1, positions={"k": {0: 7}})})
    assert await sessions.take_over(phone) is None  # nothing stored yet
    owner = Owner.decode(table.value(owner_key("phone")))
    assert (owner.nonce, owner.connected) == ("n1", True)
    clients["phone"] = phone
    await sessions.release(phone)  # persistent: state kept, owner marked gone
    state = sessions.load("phone")
    assert state is not None and state.left_at is not None
    assert (state.pubrel_out, state.pubrel_in) == ([3], [4])
    assert state.subscriptions["s/#"].positions == {"k": {0: 7}}
    del clients["phone"]
    again = FakeHolder("phone", nonce="n2")
    resumed = await sessions.take_over(again)
    assert isinstance(resumed, SessionState) and resumed.subscriptions["s/#"].qos == 1


async def test_a_clean_session_leaves_nothing_behind():
    table = FakeTable()
    sessions = SessionManager(table, {})
    kiosk = FakeHolder("kiosk", persistent=False, expiry=0)
    await sessions.take_over(kiosk)
    await sessions.release(kiosk)
    assert table.items() == []


async def test_an_owner_claim_elsewhere_takes_the_local_connection_over():
    local = FakeHolder("phone", nonce="mine")
    sessions = SessionManager(FakeTable(), {"phone": local})
    claim = Owner("theirs", True, 0.0).encode()
    seen = sessions.observe(Message("t", owner_key("phone"), claim, partition=0, offset=1))
    assert seen is not None and seen[0] == "phone"
    assert local.kicked == [ReasonCode.SESSION_TAKEN_OVER] and local.taken_over_by == "theirs"
    # our own claim read back closes nothing
    mine = Owner("mine2", True, 0.0).encode()
    other = FakeHolder("tablet", nonce="mine2")
    sessions = SessionManager(FakeTable(), {"tablet": other})
    sessions.observe(Message("t", owner_key("tablet"), mine, partition=0, offset=2))
    assert other.kicked == []


async def test_saves_are_capped_per_flush_and_oldest_first(monkeypatch):
    from protocols.mqtt import sessions as module

    monkeypatch.setattr(module, "MAX_SAVES_PER_FLUSH", 2)
    table = FakeTable()
    clients = {f"c{i}": FakeHolder(f"c{i}", session_dirty=True) for i in range(5)}
    sessions = SessionManager(table, clients)
    await sessions.flush_dirty()
    assert [key for key, _ in table.writes] == [b"c0", b"c1"]
    await sessions.flush_dirty()
    assert [key for key, _ in table.writes[2:]] == [b"c2", b"c3"]


# -- wills ------------------------------------------------------------------------------------


@dataclass
class FakeOwner:
    """WillOwner: the connection a will belongs to."""

    client_id: str
    sender: Sender
    nonce: str = "n1"
    expiry: int | None = 600


class Spawned:
    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def __call__(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        self.tasks.append(asyncio.ensure_future(coroutine))

    async def settle(self) -> None:
        while self.tasks:
            await self.tasks.pop(0)


def make_wills(
    producer: FakeProducer, connected: set[str] | None = None
) -> tuple[Wills, Ingest, FakeTable, Spawned]:
    ingest, _ = make_ingest(producer)
    table, spawned = FakeTable(), Spawned()
    instances = Instances("me", 30.0)
    wills = Wills("me", table, instances, ingest, (connected or set()).__contains__, spawned)
    table.readers.append(wills.observe)  # every instance follows the sessions table
    return wills, ingest, table, spawned


def will_connect(topic: str = "u/last/words", retain: bool = False, delay: int = 0) -> Connect:
    props = Properties(will_delay_interval=delay) if delay else Properties()
    return Connect(
        protocol_level=5,
        client_id="phone",
        will_topic=topic,
        will_payload=b"gone",
        will_qos=1,
        will_retain=retain,
        will_properties=props,
    )


async def test_an_armed_will_is_stored_for_other_instances_and_published_at_an_unclean_end():
    producer = FakeProducer(auto=True)
    wills, ingest, table, spawned = make_wills(producer)
    owner = FakeOwner("phone", ingest.sender("phone", ANONYMOUS, None))
    connect = will_connect(retain=True)
    wills.arm(owner, connect)
    await spawned.settle()
    stored = StoredWill.decode(table.value(will_key("phone")))
    assert (stored.armed_by, stored.record.value) == ("me", b"gone")
    assert producer.submitted == []  # armed, not published
    wills.schedule(owner, connect)  # the connection ended without DISCONNECT
    await spawned.settle()
    # one publish path: the will's record and its retained-table record, as for a client
    assert producer.topics() == ["u-any", RETAINED]
    assert producer.submitted[0][0].header("mqtt-client") == b"phone"
    assert table.get(will_key("phone")) is None  # published: the stored will is cleared


async def test_a_delayed_will_waits_and_a_reconnect_cancels_it():
    producer = FakeProducer(auto=True)
    wills, ingest, table, spawned = make_wills(producer)
    owner = FakeOwner("phone", ingest.sender("phone", ANONYMOUS, None))
    wills.schedule(owner, will_connect(delay=300))
    await spawned.settle()
    assert wills.pending() == 1 and producer.submitted == []
    assert StoredWill.decode(table.value(will_key("phone"))).due > 0
    wills.cancel("phone")  # the client is back
    assert wills.pending() == 0 and producer.submitted == []


async def test_a_will_the_route_refuses_is_neither_stored_nor_published():
    producer = FakeProducer(auto=True)
    wills, ingest, table, spawned = make_wills(producer)
    owner = FakeOwner("phone", ingest.sender("phone", ANONYMOUS, None))
    connect = will_connect(topic="nowhere/at/all")
    wills.arm(owner, connect)
    wills.schedule(owner, connect)
    await spawned.settle()
    assert table.writes == [] and producer.submitted == []


async def test_another_instances_will_is_claimed_once_the_client_is_gone():
    """A will left by a dead instance (not armed: its delay ran out there) is claimed and
    published here, unless the client came back."""
    producer = FakeProducer(auto=True)
    wills, _, table, spawned = make_wills(producer, connected={"back"})
    record = Message("u-any", b"u/last/words", b"gone", (("mqtt-topic", b"u/last/words"),))
    for client_id in ("phone", "back"):
        # due in an hour: no timer fires during the test, the grace's end is called below
        will = StoredWill(client_id, "old", time.time() + 3600, record, None)
        await table.put(will_key(client_id), will.encode())  # read back: watched here
    for client_id in ("phone", "back"):
        watched = wills._watched[client_id]
        wills._orphan_due(client_id, watched)  # its grace is over (no waiting in a unit test)
        await spawned.settle()
    assert producer.topics() == ["u-any"]  # once: "back" is connected here, its will is void
    assert table.get(will_key("phone")) is None and table.get(will_key("back")) is None
    phone = [json.loads(v) for k, v in table.writes if v and k == will_key("phone")]
    claims = [w["claim"]["by"] for w in phone if "claim" in w]
    assert claims == ["me"]


def test_session_positions_keep_their_epoch_and_old_records_still_load():
    stored = StoredSubscription("s/#", 1, positions={"k": {0: 7}}, epochs={"k": 0xBEEF})
    state = SessionState("c", 60, subscriptions={"s/#": stored})
    again = SessionState.decode(state.encode())
    assert again.subscriptions["s/#"].epochs == {"k": 0xBEEF}
    assert again.subscriptions["s/#"].positions == {"k": {0: 7}}
    # a record written before epochs: no "ep", positions trusted as they are (epoch 0)
    old = b'{"v":1,"client":"c","expiry":60,"subs":[{"filter":"s/#","qos":1,"pos":{"k":{"0":7}}}]}'
    legacy = SessionState.decode(old).subscriptions["s/#"]
    assert legacy.positions == {"k": {0: 7}} and legacy.epochs == {}


async def test_shared_group_progress_keeps_its_epoch_and_another_epoch_restarts():
    import json

    from protocols.mqtt.shared import Membership, position_key
    from protocols.mqtt.subscriptions import SharedGroup

    table = FakeTable()
    membership = Membership(table, "i1")  # type: ignore[arg-type]
    group = SharedGroup("g", "s/#", persistent_expiry=None)
    group.progress = {("k", 0): 7, ("k", 1): 3}
    group.unsaved = {("k", 0), ("k", 1)}
    group.epochs = {"k": 0xBEEF}
    await membership.save_progress(group)
    assert membership.saved_positions("g", "s/#", "k", [0, 1], 0xBEEF) == ({0: 7, 1: 3}, False)
    # the topic was recreated meanwhile: its old offsets mean nothing, read it from the start
    assert membership.saved_positions("g", "s/#", "k", [0, 1], 0xCAFE) == ({0: 0, 1: 0}, True)
    # progress saved before epochs (no "epoch") is trusted as it was
    await table.put(position_key("g", "s/#", "k", 0), json.dumps({"next": 5}).encode())
    assert membership.saved_positions("g", "s/#", "k", [0], 0xCAFE) == ({0: 5}, False)
