"""The route table: from a protocol address to the route (and its parameters) that serves it.

Each protocol gets its own :class:`AddressRouter`; where several templates match an address the
most specific one wins (literal level > ``{param}`` > ``{rest...}``, compared level by level), so a
catch-all route never shadows a specific one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from bridge.model.address import AddressTemplate
from bridge.model.config import Config, ProtocolBinding, Route
from bridge.model.message import Message

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    target: T
    params: dict[str, str]


class AddressRouter(Generic[T]):
    """Templates -> targets, matched most-specific first."""

    def __init__(self, entries: Iterable[tuple[AddressTemplate, T]]) -> None:
        self._entries = sorted(entries, key=lambda entry: entry[0].specificity, reverse=True)

    def match(self, address: str) -> Match[T] | None:
        for template, target in self._entries:
            params = template.match(address)
            if params is not None:
                return Match(target, params)
        return None

    def all_matches(self, address: str) -> list[Match[T]]:
        return [
            Match(target, params)
            for template, target in self._entries
            if (params := template.match(address)) is not None
        ]

    def intersecting(self, topic_filter: str) -> list[T]:
        """Targets whose template some topic matching ``topic_filter`` could match."""
        return [target for template, target in self._entries if template.intersects(topic_filter)]

    def __iter__(self) -> Iterator[tuple[AddressTemplate, T]]:
        return iter(self._entries)


@dataclass(frozen=True, slots=True)
class HttpTarget:
    route: Route
    binding: ProtocolBinding

    @property
    def method(self) -> str:
        return str(self.binding.options["method"])


LITERAL_PATHS = 1024  # paths remembered by RouteTable.http_match at most


class RouteTable:
    """All routes of a configuration, indexed for each protocol."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        self.by_name = {route.name: route for route in routes}
        self.mqtt = AddressRouter((r.mqtt.template, r) for r in routes if r.mqtt)
        self.sse = AddressRouter((r.sse.template, r) for r in routes if r.sse)
        self.http = AddressRouter(
            (binding.template, HttpTarget(route, binding))
            for route in routes
            for binding in route.http
        )
        # path -> its HTTP matches, for paths whose matches took no parameter (POST /bets is
        # matched the same way every time; a parameter's value is part of the answer, and
        # those paths are many): every HTTP request asks.
        self._http_literal: dict[str, list[Match[HttpTarget]]] = {}

    @classmethod
    def from_config(cls, config: Config) -> RouteTable:
        return cls(config.routes)

    def http_match(self, method: str, path: str) -> tuple[Match[HttpTarget] | None, set[str]]:
        """The match for method+path, and every method the path allows (for 405 Allow)."""
        matches = self._http_literal.get(path)
        if matches is None:
            matches = self.http.all_matches(path)
            if (
                matches
                and not any(m.params for m in matches)
                and len(self._http_literal) < LITERAL_PATHS
            ):
                self._http_literal[path] = matches
        allowed = {m.target.method for m in matches}
        chosen = next((m for m in matches if m.target.method == method), None)
        return chosen, allowed

    def kafka_topics(self) -> list[str]:
        return sorted({route.topic for route in self.routes})

    def routes_for_topic(self, topic: str) -> list[Route]:
        return [route for route in self.routes if route.topic == topic]

    def mqtt_topic_of(
        self, message: Message, routes: Sequence[Route] | None = None
    ) -> tuple[Route, str] | None:
        """The route and concrete MQTT topic a Kafka record stands for (first route that fits).

        Routes are tried most specific first, so a record of a topic shared by a specific route
        and a catch-all is attributed to exactly one of them.
        """
        candidates = routes if routes is not None else self.routes_for_topic(message.topic)
        ordered = sorted(
            (r for r in candidates if r.mqtt and r.topic == message.topic),
            key=lambda r: r.mqtt.template.specificity if r.mqtt else (),
            reverse=True,
        )
        for route in ordered:
            params = route.params_from_record(message.key, message.headers)
            if params is None or route.mqtt is None:
                continue
            topic = route.mqtt.template.render(params)
            if topic is not None and self.mqtt.match(topic) is not None:
                owner = self.mqtt.match(topic)
                if owner is not None and owner.target is route:
                    return route, topic
        return None
