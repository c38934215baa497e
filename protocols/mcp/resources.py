"""Resources: each data product and its schema; ``resources/subscribe`` on a product sends
``notifications/resources/updated`` when new records arrive.

Notifications are coalesced: a burst of records becomes one notification per subscription per
``min_interval_s`` (an agent re-reads the product anyway; a notification per record would flood
its context). Each MCP session holds at most ``MAX_PER_SESSION`` subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from bridge.kafka.hub import Hub, Start, Subscription
from bridge.model.config import Route
from bridge.model.message import Message
from bridge.model.position import Position

log = structlog.get_logger(__name__)

SCHEME = "edgebridge"
PRODUCT_PREFIX = f"{SCHEME}://products/"
SCHEMA_SUFFIX = "/schema"
MAX_PER_SESSION = 64
MIN_INTERVAL_S = 0.2


def product_uri(name: str) -> str:
    return f"{PRODUCT_PREFIX}{name}"


def schema_uri(name: str) -> str:
    return f"{PRODUCT_PREFIX}{name}{SCHEMA_SUFFIX}"


def parse_uri(uri: str) -> tuple[str, bool] | None:
    """(product name, is the schema) of one of our URIs, else None."""
    if not uri.startswith(PRODUCT_PREFIX):
        return None
    rest = uri[len(PRODUCT_PREFIX) :]
    if rest.endswith(SCHEMA_SUFFIX):
        return rest[: -len(SCHEMA_SUFFIX)], True
    return (rest, False) if rest and "/" not in rest else None


Notify = Callable[[str], Awaitable[None]]


@dataclass(eq=False, slots=True)
class Watch:
    """One session's subscription to one product: a hub subscriber that only sets a flag."""

    uri: str
    notify: Notify
    min_interval_s: float
    route: Route | None = None
    params: Mapping[str, str] = field(default_factory=dict)  # only records of these parameters
    pending: asyncio.Event = field(default_factory=asyncio.Event)
    subscription: Subscription | None = None
    task: asyncio.Task[None] | None = None
    sent: int = 0

    def deliver(self, record: Message, position: Position) -> None:
        if self.params and self.route is not None:
            found = self.route.params_from_record(record.key, record.headers)
            if found is None or any(found.get(k) != v for k, v in self.params.items()):
                return  # another user's record of an identity-bound product: not even a hint
        self.pending.set()  # coalesced: any number of records, one notification

    async def run(self) -> None:
        while True:
            await self.pending.wait()
            self.pending.clear()
            try:
                await self.notify(self.uri)
            except Exception as exc:  # the session is gone: stop watching
                log.info("mcp.watch_ended", uri=self.uri, error=repr(exc))
                self.close()
                return
            self.sent += 1
            await asyncio.sleep(self.min_interval_s)

    def close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class Watches:
    """Every resource subscription of the front-end, by session."""

    def __init__(self, hub: Hub, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.hub = hub
        self.min_interval_s = min_interval_s
        self._by_session: dict[Any, dict[str, Watch]] = {}

    async def watch(
        self,
        session: Any,
        uri: str,
        route: Route,
        notify: Notify,
        params: Mapping[str, str] | None = None,
    ) -> None:
        mine = self._by_session.setdefault(session, {})
        if uri in mine:
            return
        if len(mine) >= MAX_PER_SESSION:
            raise OverflowError(
                f"at most {MAX_PER_SESSION} resource subscriptions per session; unsubscribe first"
            )
        watch = Watch(uri, notify, self.min_interval_s, route, dict(params or {}))
        watch.subscription = await self.hub.subscribe(route.topic, watch, Start.LIVE)
        watch.task = asyncio.create_task(watch.run(), name=f"mcp-watch:{uri}")
        mine[uri] = watch

    def unwatch(self, session: Any, uri: str) -> None:
        watch = self._by_session.get(session, {}).pop(uri, None)
        if watch is not None:
            watch.close()

    def count(self) -> int:
        return sum(len(m) for m in self._by_session.values())

    async def close(self) -> None:
        sessions, self._by_session = self._by_session, {}
        for mine in sessions.values():
            for watch in mine.values():
                watch.close()
                if watch.task is not None:
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch.task
