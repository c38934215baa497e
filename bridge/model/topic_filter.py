"""MQTT topic names and topic filters, exactly as MQTT 3.1.1 section 4.7 / MQTT 5 section 4.7 define.

This is the reference semantics every other matcher in Edgebridge is tested against. It lives in
the core because routing needs it in both directions (see :mod:`bridge.model.address`).
"""

from __future__ import annotations

SEPARATOR = "/"
SINGLE = "+"
MULTI = "#"


class TopicError(ValueError):
    """A topic name or filter that MQTT does not allow."""


def validate_topic_name(name: str) -> None:
    """A PUBLISH topic name: non-empty, no wildcards, no NUL."""
    if not name:
        raise TopicError("topic name is empty")
    if SINGLE in name or MULTI in name:
        raise TopicError("topic name must not contain wildcards")
    if "\x00" in name:
        raise TopicError("topic name must not contain NUL")


def validate_filter(topic_filter: str) -> None:
    """A SUBSCRIBE filter: ``+`` alone in a level, ``#`` alone and last."""
    if not topic_filter:
        raise TopicError("topic filter is empty")
    if "\x00" in topic_filter:
        raise TopicError("topic filter must not contain NUL")
    levels = topic_filter.split(SEPARATOR)
    for index, level in enumerate(levels):
        if MULTI in level and (level != MULTI or index != len(levels) - 1):
            raise TopicError("'#' must be a whole level and the last one")
        if SINGLE in level and level != SINGLE:
            raise TopicError("'+' must be a whole level")


def filter_matches(topic_filter: str, name: str) -> bool:
    """Does the (valid) ``topic_filter`` match the (valid) topic ``name``?"""
    if name.startswith("$") and topic_filter[:1] in (SINGLE, MULTI):
        return False  # wildcards at the first level never match $SYS-style topics
    filter_levels = topic_filter.split(SEPARATOR)
    name_levels = name.split(SEPARATOR)
    for index, level in enumerate(filter_levels):
        if level == MULTI:
            return True  # also matches the parent level: "a/#" matches "a"
        if index >= len(name_levels):
            return False
        if level != SINGLE and level != name_levels[index]:
            return False
    return len(filter_levels) == len(name_levels)


def is_wildcard(topic_filter: str) -> bool:
    return SINGLE in topic_filter or MULTI in topic_filter


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """Split ``$share/{group}/{filter}`` into (group, filter); (None, filter) otherwise."""
    if not topic_filter.startswith("$share/"):
        return None, topic_filter
    parts = topic_filter.split(SEPARATOR, 2)
    if len(parts) < 3 or not parts[1] or SINGLE in parts[1] or MULTI in parts[1] or not parts[2]:
        raise TopicError("shared subscription must be $share/{group}/{filter}")
    return parts[1], parts[2]
