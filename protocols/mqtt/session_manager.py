"""Taking over, saving, releasing and expiring sessions through the sessions table.

See :mod:`protocols.mqtt.sessions` for the record layout. The order of a CONNECT:

1. a connection with the same client id on *this* instance is closed (0x8E) and its state saved;
2. the table is synced (read-your-writes of every instance), then an owner claim is written;
3. every instance sees the claim; one holding the client id under another nonce closes it (0x8E)
   and saves its state with ``released_to`` = our nonce, which we wait for (bounded);
4. the state is read: ``session present`` if it exists and has not expired.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from bridge.kafka.hub import CallbackSubscriber, Start
from bridge.kafka.table_store import TableStore
from bridge.model.message import Message
from bridge.model.position import Position

from .packets import ReasonCode
from .sessions import Owner, SessionState, client_of_owner_key, owner_key, state_key
from .wills import client_of_will_key

if TYPE_CHECKING:
    from .client import Client
    from .frontend import MqttFrontend

log = structlog.get_logger(__name__)
RELEASE_WAIT_S = 3.0
MAX_SAVES_PER_FLUSH = 250  # per instance and flush interval (see flush_dirty)


class SessionManager:
    def __init__(self, frontend: MqttFrontend, topic: str) -> None:
        self.frontend = frontend
        self.topic = topic
        producer, hub = frontend.bridge.kafka
        self.store = TableStore(producer, hub, topic)
        self._dirty_since: dict[Client, float] = {}  # dirty sessions not yet saved, since when

    async def open(self) -> None:
        await self.store.open()
        self.frontend.instances.load(self.store.items())  # before the wills that name them
        self.frontend.wills.load(self.store.items())
        _, hub = self.frontend.bridge.kafka
        await hub.subscribe(self.topic, CallbackSubscriber(self._on_record), Start.LIVE)

    # -- watching other instances --------------------------------------------------------------

    def _on_record(self, record: Message, position: Position) -> None:
        membership = getattr(self.frontend, "membership", None)
        if membership is not None:
            membership.observe(record)
        self.frontend.instances.observe(record)
        if client_of_will_key(record.key) is not None:
            self.frontend.wills.observe(record)
            return
        client_id = client_of_owner_key(record.key)
        if client_id is None or record.value is None:
            return
        owner = Owner.decode(record.value)
        if not owner.connected:
            return
        self.frontend.wills.cancel(client_id, unless_nonce=owner.nonce)
        local = self.frontend.clients.get(client_id)
        if local is not None and local.nonce != owner.nonce and local.taken_over_by is None:
            log.info("mqtt.session_taken_over", client_id=client_id, by="another instance")
            local.taken_over_by = owner.nonce
            local.kick(ReasonCode.SESSION_TAKEN_OVER, "session taken over")

    # -- CONNECT ---------------------------------------------------------------------------------

    async def take_over(self, client: Client) -> SessionState | None:
        """Own ``client.client_id`` cluster-wide; return its stored session (None: none)."""
        client_id = client.client_id
        self.frontend.wills.cancel(client_id)
        self.frontend.wills.forget(client_id)  # a will stored by any instance is void now
        old = self.frontend.clients.get(client_id)
        if old is not None and old is not client:
            log.info("mqtt.session_taken_over", client_id=client_id, by="this instance")
            old.taken_over_by = client.nonce
            old.kick(ReasonCode.SESSION_TAKEN_OVER, "session taken over")
            await asyncio.wait_for(old.done.wait(), RELEASE_WAIT_S * 2)
        await self.store.sync()
        previous = self.store.get(owner_key(client_id))
        await self.store.put(owner_key(client_id), Owner(client.nonce, True, time.time()).encode())
        if previous is not None and previous.value is not None:
            prev = Owner.decode(previous.value)
            if prev.connected and (old is None or prev.nonce != old.nonce):
                await self._await_release(client_id, client.nonce)
        state = self.load(client_id)
        if state is not None and state.expired():
            log.info("mqtt.session_expired", client_id=client_id)
            await self.delete(client_id)
            return None
        return state

    async def _await_release(self, client_id: str, nonce: str) -> None:
        """The previous owner, on another instance, saves its state for us; wait for it."""
        deadline = time.monotonic() + RELEASE_WAIT_S
        while time.monotonic() < deadline:
            state = self.load(client_id)
            if state is None or state.released_to == nonce or state.left_at is not None:
                return
            await asyncio.sleep(0.02)
        log.warning("mqtt.release_timeout", client_id=client_id)

    def load(self, client_id: str) -> SessionState | None:
        record = self.store.get(state_key(client_id))
        if record is None or record.value is None:
            return None
        try:
            return SessionState.decode(record.value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mqtt.session_unreadable", client_id=client_id, error=str(exc))
            return None

    # -- saving ----------------------------------------------------------------------------------

    def state_of(self, client: Client, left: bool = False) -> SessionState:
        inflight = client.inflight_tokens()
        subs = {
            topic_filter: subscription.stored(inflight.get(subscription, {}))
            for topic_filter, subscription in client.subscriptions.items()
        }
        return SessionState(
            client_id=client.client_id,
            expiry=client.expiry,
            subscriptions=subs,
            pubrel_out=sorted(client.conn.awaiting_pubcomp),
            pubrel_in=sorted(client.conn.awaiting_pubrel),
            left_at=time.time() if left else None,
            released_to=client.taken_over_by if left else None,
        )

    async def save(self, client: Client, left: bool = False) -> None:
        client.session_dirty = False
        await self.store.put(state_key(client.client_id), self.state_of(client, left).encode())

    async def delete(self, client_id: str) -> None:
        if self.store.get(state_key(client_id)) is not None:
            await self.store.put(state_key(client_id), None)

    async def release(self, client: Client) -> None:
        """The connection is gone: keep (persistent) or end its session."""
        if client.persistent:
            await self.save(client, left=True)
        else:
            await self.delete(client.client_id)
        if client.taken_over_by is not None:
            return  # the owner record belongs to the new connection now
        if client.persistent:
            owner = Owner(client.nonce, False, time.time())
            await self.store.put(owner_key(client.client_id), owner.encode())
        else:
            await self.store.put(owner_key(client.client_id), None)

    async def flush_dirty(self) -> None:
        """Save sessions whose positions moved (after acknowledgements), longest-waiting first.

        Concurrently: the store sends concurrent writes together. At most
        :data:`MAX_SAVES_PER_FLUSH` per flush, because every instance reads every session
        record: 10,000 sessions saved every second would have each instance decode 10,000
        records a second. The rest wait for the next flush. This only bounds how stale a saved
        position can be after an instance *crash* (QoS 1 re-sends, never loss): a disconnect or
        a takeover always saves the exact state.
        """
        now = time.monotonic()
        waiting = self._dirty_since
        for client in self.frontend.clients.values():
            if client.session_dirty and client.persistent and not client.closed:
                waiting.setdefault(client, now)
        for client in [c for c in waiting if not c.session_dirty or c.closed]:
            del waiting[client]
        clients = sorted(waiting, key=waiting.__getitem__)[:MAX_SAVES_PER_FLUSH]
        for client in clients:
            del waiting[client]
        results = await asyncio.gather(
            *(self.save(client) for client in clients), return_exceptions=True
        )
        for client, result in zip(clients, results, strict=True):
            if isinstance(result, Exception):  # Kafka hiccup: try again next round
                client.session_dirty = True
                log.warning(
                    "mqtt.session_save_failed", client_id=client.client_id, error=repr(result)
                )

    async def sweep_expired(self) -> int:
        """Delete sessions whose expiry passed while nobody is connected. Returns how many."""
        removed = 0
        now = time.time()
        for key, record in self.store.items():
            if key is None or record.value is None or client_of_owner_key(key) is not None:
                continue
            try:
                state = SessionState.decode(record.value)
            except (ValueError, KeyError, TypeError):
                continue
            if not state.expired(now) or state.client_id in self.frontend.clients:
                continue
            owner = self.store.get(owner_key(state.client_id))
            if (
                owner is not None
                and owner.value is not None
                and Owner.decode(owner.value).connected
            ):
                continue
            await self.store.put(key, None)
            await self.store.put(owner_key(state.client_id), None)
            removed += 1
            log.info("mqtt.session_expired", client_id=state.client_id)
        return removed
