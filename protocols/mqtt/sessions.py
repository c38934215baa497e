"""Taking over, saving, releasing and expiring sessions through the sessions table.

See :mod:`protocols.mqtt.session_state` for the record layout. The order of a CONNECT:

1. a connection with the same client id on *this* instance is closed (0x8E) and its state saved;
2. the table is synced (read-your-writes of every instance), then an owner claim is written;
3. every instance sees the claim; one holding the client id under another nonce closes it (0x8E)
   and saves its state with ``released_to`` = our nonce, which we wait for (bounded);
4. the state is read: ``session present`` if it exists and has not expired.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

import structlog

from bridge.model.message import Message

from .ports import Table
from .session_state import (
    Owner,
    SessionState,
    StoredSubscription,
    client_of_owner_key,
    owner_key,
    state_key,
)
from .wire.packets import ReasonCode

log = structlog.get_logger(__name__)
RELEASE_WAIT_S = 3.0
MAX_SAVES_PER_FLUSH = 250  # per instance and flush interval (see flush_dirty)


class SessionHolder(Protocol):
    """A connection as its session sees it (:class:`protocols.mqtt.client.Client`)."""

    client_id: str
    nonce: str  # this connection's: an owner record names it
    persistent: bool
    expiry: int | None
    closed: bool
    session_dirty: bool  # positions moved since the last save
    taken_over_by: str | None  # the nonce of the connection that replaced it

    @property
    def done(self) -> asyncio.Event:
        """Set once the connection is gone and its session saved or ended."""
        ...

    def kick(self, code: int, reason: str) -> None:
        """Close from the server side, telling an MQTT 5 client why."""
        ...

    def stored_subscriptions(self) -> dict[str, StoredSubscription]:
        """Its subscriptions with their positions and deliveries in flight."""
        ...

    def pubrel_ids(self) -> tuple[list[int], list[int]]:
        """QoS 2 packet ids in their second phase: (ours awaiting PUBCOMP, its awaiting PUBREL)."""
        ...


class SessionManager:
    def __init__(self, store: Table, clients: Mapping[str, SessionHolder]) -> None:
        self.store = store
        self.clients = clients  # this instance's connected clients, by client id
        self._dirty_since: dict[SessionHolder, float] = {}  # not yet saved, since when

    # -- watching other instances --------------------------------------------------------------

    def observe(self, record: Message) -> tuple[str, Owner] | None:
        """A record of the sessions table: an owner claim of a client id held here under
        another nonce closes that connection (taken over). Returns the client id and the claim
        of a connected owner."""
        client_id = client_of_owner_key(record.key)
        if client_id is None or record.value is None:
            return None
        owner = Owner.decode(record.value)
        if not owner.connected:
            return None
        local = self.clients.get(client_id)
        if local is not None and local.nonce != owner.nonce and local.taken_over_by is None:
            log.info("mqtt.session_taken_over", client_id=client_id, by="another instance")
            local.taken_over_by = owner.nonce
            local.kick(ReasonCode.SESSION_TAKEN_OVER, "session taken over")
        return client_id, owner

    # -- CONNECT ---------------------------------------------------------------------------------

    async def take_over(self, client: SessionHolder) -> SessionState | None:
        """Own ``client.client_id`` cluster-wide; return its stored session (None: none).
        (Its will, stored or pending anywhere, is the caller's to void first.)"""
        client_id = client.client_id
        old = self.clients.get(client_id)
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

    def state_of(self, client: SessionHolder, left: bool = False) -> SessionState:
        pubrel_out, pubrel_in = client.pubrel_ids()
        return SessionState(
            client_id=client.client_id,
            expiry=client.expiry,
            subscriptions=client.stored_subscriptions(),
            pubrel_out=pubrel_out,
            pubrel_in=pubrel_in,
            left_at=time.time() if left else None,
            released_to=client.taken_over_by if left else None,
        )

    async def save(self, client: SessionHolder, left: bool = False) -> None:
        client.session_dirty = False
        await self.store.put(state_key(client.client_id), self.state_of(client, left).encode())

    async def delete(self, client_id: str) -> None:
        if self.store.get(state_key(client_id)) is not None:
            await self.store.put(state_key(client_id), None)

    async def release(self, client: SessionHolder) -> None:
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
        for client in self.clients.values():
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
            if not state.expired(now) or state.client_id in self.clients:
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
