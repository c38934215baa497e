"""Payload validation at the edge, with each route's JSON Schema, the same for every protocol."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema

from bridge.model import strict_json
from bridge.model.config import Route


@dataclass(frozen=True, slots=True)
class Violation:
    """One reason a payload was refused: where in the document (JSON pointer) and why."""

    pointer: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.message}


class InvalidPayload(ValueError):
    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.pointer or '/'}: {v.message}" for v in violations))


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


# A route's schema is one object for the life of the config: remember its validator by
# identity, so the hot path skips serialising the schema to find it (kept: the schema itself,
# so an id is never reused while it is in here).
_by_identity: dict[int, tuple[Mapping[str, Any], jsonschema.protocols.Validator]] = {}


def validator_for(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    known = _by_identity.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1]
    validator = _validator(json.dumps(schema, sort_keys=True))
    if len(_by_identity) < 1024:
        _by_identity[id(schema)] = (schema, validator)
    return validator


def validate_payload(route: Route, value: bytes | None, content_type: str | None = None) -> Any:
    """Check ``value`` against the route's schema; return the parsed JSON.

    JSON is parsed strictly (:mod:`bridge.model.strict_json`: no NaN, no infinities, no duplicate
    members) whenever the route has a schema, or the message or the route says it is JSON
    (``content_type``, e.g. HTTP ``Content-Type`` or MQTT 5's content type property). Otherwise the
    payload is opaque bytes and None is returned.

    Raises :class:`InvalidPayload` listing every violation, with JSON pointers to the fields.
    """
    if route.schema is None:
        if value and is_json_type(content_type or route.content_type):
            return _strict(value)
        return None
    if value is None:
        raise InvalidPayload([Violation("", "a payload is required")])
    document = _strict(value)
    errors = sorted(
        validator_for(route.schema).iter_errors(document),
        key=lambda e: list(map(str, e.absolute_path)),
    )
    if errors:
        raise InvalidPayload([Violation(_error_pointer(e), e.message) for e in errors])
    return document


def is_json_type(content_type: str | None) -> bool:
    """``application/json``, ``application/problem+json``, ``text/json``..., parameters ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.endswith("/json") or media.endswith("+json")


def _strict(value: bytes) -> Any:
    try:
        return strict_json.loads(value)
    except strict_json.StrictJsonError as exc:
        raise InvalidPayload([Violation(exc.pointer, exc.detail)]) from exc


def _error_pointer(error: jsonschema.ValidationError) -> str:
    """Where the error is; a missing required property points at the property itself."""
    pointer = _pointer(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        for name in error.validator_value:
            if name not in error.instance and error.message.startswith(repr(name)):
                return pointer + _pointer([name])
    return pointer


def _pointer(path: Any) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)
