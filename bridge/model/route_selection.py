"""A route plus address parameters: which records of the route's topic one stream carries.

Every front-end that streams or reads a route (SSE, gRPC Subscribe, MCP reads) selects records
the same way and hands out the same ids, so an id from one resumes on another: the *tag* in every
id (:func:`selection_tag`, so an id cannot resume another stream), the one Kafka *key* the
parameters name when they name one (the hub then filters by key, live and in catch-up reads
alike), and :meth:`RouteSelection.accepts` for parameters the key does not settle (carried in
headers, or a key template that needs more than the address gives).
"""

from __future__ import annotations

from collections.abc import Mapping

from bridge.model.config import Route
from bridge.model.message import Message
from bridge.model.position import stream_tag


def selection_tag(route: Route, params: Mapping[str, str]) -> int:
    """The stream tag in every id of this selection."""
    return stream_tag(route.name, *(f"{name}={value}" for name, value in sorted(params.items())))


def selection_key(route: Route, params: Mapping[str, str]) -> bytes | None:
    """The one Kafka key the parameters determine; None means "every key" (no parameters, or a
    key template that needs something the address does not give: :meth:`accepts` filters)."""
    if not params or route.key is None or route.key.sources:
        return None
    rendered = route.key.render(params)
    return rendered.encode() if rendered is not None else None


class RouteSelection:
    """A route plus parameters; front-ends' stream channels build on it."""

    __slots__ = ("key", "name", "needs_filter", "params", "route", "tag")

    def __init__(self, route: Route, params: Mapping[str, str]) -> None:
        self.route = route
        self.params = dict(params)
        self.name = (route.name, tuple(sorted(self.params.items())))
        self.tag = selection_tag(route, self.params)
        self.key = selection_key(route, self.params)
        # The hub's key filter is exact; parameters carried in headers still need a look.
        header_params = {p for t in route.headers.values() for p in t.parameters}
        self.needs_filter = bool(self.params) and (
            self.key is None or bool(header_params & set(self.params))
        )

    def accepts(self, record: Message) -> bool:
        """Does ``record`` belong to these parameters?"""
        if not self.needs_filter:
            return True
        found = self.route.params_from_record(record.key, record.headers)
        if found is None:
            return False
        return all(found.get(name) == value for name, value in self.params.items())
