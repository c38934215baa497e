"""Subscriber filters: a route's declared filter parameters, bound to a client's values.

A route declares what a subscriber may narrow it by (``[[routes.filters]]``: a parameter name,
where the value is read from - the Kafka key, a header, or a JSON pointer into the value - an
operator and a type). A client names values for some of them (``?market=1x2&min_odds=2.5`` on an
SSE path or HTTP fetch, MQTT 5 user properties on SUBSCRIBE). :meth:`FilterSpec.bind` checks
those values and turns them into a :class:`RecordFilter`: *canonical* (conditions sorted, values
typed), hashable and comparable, so every subscriber asking for the same thing holds an equal
filter and the hub evaluates it once per record for all of them
(:class:`bridge.kafka.hub.TopicFeed`).

Pure data: no I/O, no protocol. A record's JSON value is parsed at most once per record however
many filters look at it (:class:`RecordView`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bridge.model import strict_json
from bridge.model.message import Message

OPERATORS = ("eq", "ne", "in", "gt", "gte", "lt", "lte", "prefix")
TYPES = ("string", "number", "boolean")
_ORDERED = ("gt", "gte", "lt", "lte")
MAX_IN_VALUES = 64


class FilterError(ValueError):
    """A client's filter value is not acceptable; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True, slots=True)
class FilterParam:
    """One ``[[routes.filters]]`` entry."""

    name: str
    source: str  # "key", "header:NAME" or a JSON pointer ("/market")
    operator: str = "eq"
    type: str = "string"

    @property
    def kind(self) -> str:
        if self.source == "key":
            return "key"
        if self.source.startswith("header:"):
            return "header"
        return "json"

    @property
    def argument(self) -> str:
        """The header name or JSON pointer (empty for the key)."""
        if self.kind == "header":
            return self.source[len("header:") :]
        return self.source if self.kind == "json" else ""


def check_param(param: FilterParam) -> str | None:
    """Why a declaration cannot work (for ``edgebridge check``), or None."""
    if param.operator not in OPERATORS:
        return f"operator {param.operator!r} is not one of {', '.join(OPERATORS)}"
    if param.type not in TYPES:
        return f"type {param.type!r} is not one of {', '.join(TYPES)}"
    if param.operator in _ORDERED and param.type != "number":
        return f'operator {param.operator!r} compares numbers: use type = "number"'
    if param.operator == "prefix" and param.type != "string":
        return "operator 'prefix' compares text: use type = \"string\""
    if param.kind == "header" and not param.argument:
        return "source 'header:' needs a header name, e.g. 'header:market'"
    if param.kind == "json" and not param.source.startswith("/"):
        return f"source {param.source!r}: use 'key', 'header:NAME' or a JSON pointer like '/market'"
    return None


@dataclass(frozen=True, slots=True)
class Condition:
    """One bound parameter: ``source operator value``. Values are typed (float, bool, str)."""

    kind: str  # key | header | json
    argument: str
    operator: str
    value: Any  # a tuple for "in"

    def holds(self, view: RecordView) -> bool:
        found = view.lookup(self.kind, self.argument)
        if found is _MISSING:
            return False
        op = self.operator
        if op == "in":
            return any(_equal(found, v) for v in self.value)
        if op == "eq":
            return _equal(found, self.value)
        if op == "ne":
            return not _equal(found, self.value)
        if op == "prefix":
            return isinstance(found, str) and found.startswith(self.value)
        number = _number(found)
        if number is None:
            return False
        if op == "gt":
            return number > self.value
        if op == "gte":
            return number >= self.value
        if op == "lt":
            return number < self.value
        return number <= self.value  # lte


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """A canonical filter: all conditions hold. Equal filters are one group in the hub."""

    conditions: tuple[Condition, ...]

    def matches(self, view: RecordView) -> bool:
        return all(c.holds(view) for c in self.conditions)

    def matches_record(self, record: Message) -> bool:
        return self.matches(RecordView(record))

    def and_(self, other: RecordFilter | None) -> RecordFilter:
        if other is None:
            return self
        return RecordFilter(tuple(sorted({*self.conditions, *other.conditions}, key=_order)))

    @classmethod
    def of(cls, conditions: Sequence[Condition]) -> RecordFilter:
        return cls(tuple(sorted(set(conditions), key=_order)))


def combine(*filters: RecordFilter | None) -> RecordFilter | None:
    """All of ``filters`` (None where none is given)."""
    conditions = [c for f in filters if f is not None for c in f.conditions]
    return RecordFilter.of(conditions) if conditions else None


def header_equals(name: str, value: str) -> Condition:
    return Condition("header", name, "eq", value)


def _order(condition: Condition) -> tuple[str, str, str, str]:
    return (condition.kind, condition.argument, condition.operator, repr(condition.value))


_MISSING: Any = object()


class RecordView:
    """One record as filters see it: the JSON value parsed once, lazily, strictly."""

    __slots__ = ("_document", "record")

    def __init__(self, record: Message) -> None:
        self.record = record
        self._document: Any = None

    def lookup(self, kind: str, argument: str) -> Any:
        record = self.record
        if kind == "key":
            return record.key.decode("utf-8", "replace") if record.key is not None else _MISSING
        if kind == "header":
            raw = record.header(argument)
            return raw.decode("utf-8", "replace") if raw is not None else _MISSING
        document = self._document
        if document is None:
            try:
                document = strict_json.loads(record.value or b"")
            except (strict_json.StrictJsonError, ValueError):
                document = _MISSING
            self._document = document
        if document is _MISSING:
            return _MISSING
        return _pointer(document, argument)


def _pointer(document: Any, pointer: str) -> Any:
    current = document
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict):
            if part not in current:
                return _MISSING
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _equal(found: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool):
        if isinstance(found, str):
            return found == ("true" if wanted else "false")
        return found is wanted
    if isinstance(wanted, float):
        number = _number(found)
        return number is not None and number == wanted
    if isinstance(found, str):
        return found == wanted
    if isinstance(found, bool):
        return ("true" if found else "false") == wanted
    if isinstance(found, int | float):
        return _number(wanted) == float(found)
    return False


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """A route's declared filter parameters."""

    params: tuple[FilterParam, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def bind(self, values: Mapping[str, str]) -> RecordFilter | None:
        """The canonical filter for a client's ``values`` (only declared names are read; the
        caller refuses undeclared ones with :meth:`undeclared`). Raises :class:`FilterError`."""
        conditions = []
        for param in self.params:
            raw = values.get(param.name)
            if raw is None:
                continue
            conditions.append(
                Condition(param.kind, param.argument, param.operator, _typed(param, raw))
            )
        return RecordFilter.of(conditions) if conditions else None

    def undeclared(self, names: Sequence[str], reserved: Sequence[str] = ()) -> list[str]:
        declared = set(self.names) | set(reserved)
        return sorted(n for n in names if n not in declared)


NO_FILTERS = FilterSpec()

T = TypeVar("T")


class FilterIndex(Generic[T]):
    """Many filters arranged so that a record is checked only against those it could match.

    A filter with a text equality condition (``?market=1x2``: the common case) is indexed by
    that condition's source and value: a record looks the source up once and finds the filters
    wanting its value in one dict lookup, so 100 markets cost one lookup per record, not 100
    evaluations. Other filters are candidates for every record. :meth:`candidates` yields a
    superset of the matching filters; the caller still runs :meth:`RecordFilter.matches` on each.
    """

    __slots__ = ("_indexed", "_rest")

    def __init__(self, entries: Iterable[tuple[RecordFilter, T]]) -> None:
        self._indexed: dict[tuple[str, str], dict[str, list[tuple[RecordFilter, T]]]] = {}
        self._rest: list[tuple[RecordFilter, T]] = []
        for record_filter, item in entries:
            equality = next(
                (
                    c
                    for c in record_filter.conditions
                    if c.operator == "eq" and isinstance(c.value, str)
                ),
                None,
            )
            if equality is None:
                self._rest.append((record_filter, item))
                continue
            by_value = self._indexed.setdefault((equality.kind, equality.argument), {})
            by_value.setdefault(equality.value, []).append((record_filter, item))

    def candidates(self, view: RecordView) -> Iterator[tuple[RecordFilter, T]]:
        yield from self._rest
        for (kind, argument), by_value in self._indexed.items():
            found = view.lookup(kind, argument)
            if isinstance(found, str):
                yield from by_value.get(found, ())
            elif found is not _MISSING:
                # A JSON number or boolean where text is wanted ("2" equals 2): no exact key.
                for entries in by_value.values():
                    yield from entries


def _typed(param: FilterParam, raw: str) -> Any:
    if param.operator == "in":
        parts = [p for p in raw.split(",")]
        if not raw or len(parts) > MAX_IN_VALUES:
            raise FilterError(
                param.name,
                f"{param.name}: give 1 to {MAX_IN_VALUES} comma-separated values",
            )
        return tuple(sorted({_scalar(param, p) for p in parts}, key=repr))
    return _scalar(param, raw)


def _scalar(param: FilterParam, raw: str) -> Any:
    if param.type == "number":
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise FilterError(param.name, f"{param.name}: {raw[:40]!r} is not a finite number")
        return number
    if param.type == "boolean":
        if raw not in ("true", "false"):
            raise FilterError(param.name, f"{param.name}: {raw[:40]!r} is not true or false")
        return raw == "true"
    if not raw:
        raise FilterError(param.name, f"{param.name}: an empty value matches nothing")
    return raw
