"""Topic filters and address templates against simple reference implementations.

The references are deliberately different techniques (regular expressions, brute-force
enumeration of topic names) so that a shared mistake is unlikely.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.model.address import AddressTemplate, TemplateError
from bridge.model.topic_filter import TopicError, filter_matches, split_shared, validate_filter

LEVEL_VALUES = ["a", "b", "$s", ""]
levels = st.sampled_from(LEVEL_VALUES)
topic_names = st.lists(levels, min_size=1, max_size=4).map("/".join).filter(bool)
filter_levels = st.sampled_from(["a", "b", "$s", "", "+"])


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    parts = draw(st.lists(filter_levels, min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


@st.composite
def templates(draw: st.DrawFn) -> str:
    kinds = draw(st.lists(st.sampled_from(["a", "b", "$s", "{p}"]), min_size=1, max_size=4))
    out = [k if k != "{p}" else f"{{p{i}}}" for i, k in enumerate(kinds)]
    if draw(st.booleans()):
        out.append("{rest...}")
    return "/".join(out)


def reference_filter_regex(topic_filter: str) -> re.Pattern[str]:
    """MQTT 4.7 as a regular expression."""
    pattern = ""
    for index, level in enumerate(topic_filter.split("/")):
        sep = "" if index == 0 else "/"
        if level == "#":
            pattern = f"{pattern}(?:{sep}.*)?" if index else ".*"
            break
        pattern += sep + ("[^/]*" if level == "+" else re.escape(level))
    if topic_filter[:1] in ("+", "#"):
        pattern = r"(?!\$)" + pattern
    return re.compile(pattern)


def reference_template_regex(template: str) -> re.Pattern[str]:
    parts = []
    for level in template.split("/"):
        if level.endswith("...}"):
            parts.append(".+")
        elif level.startswith("{"):
            parts.append("[^/]+")
        else:
            parts.append(re.escape(level))
    return re.compile("/".join(parts))


@given(topic_filters(), topic_names)
def test_filter_matches_reference(topic_filter: str, name: str) -> None:
    expected = reference_filter_regex(topic_filter).fullmatch(name) is not None
    assert filter_matches(topic_filter, name) == expected


@given(templates(), topic_names)
def test_template_match_reference(template: str, name: str) -> None:
    compiled = AddressTemplate.compile(template)
    params = compiled.match(name)
    matched = reference_template_regex(template).fullmatch(name) is not None
    assert (params is not None) == (matched and _rest_not_empty(template, name))
    if params is not None:
        assert compiled.render(params) == name


def _rest_not_empty(template: str, name: str) -> bool:
    if not template.endswith("...}"):
        return True
    fixed = len(template.split("/")) - 1
    rest = name.split("/")[fixed:]
    return bool(rest) and rest != [""]


UNIVERSE = [
    "/".join(p) for n in range(1, 6) for p in itertools.product(["a", "b", "$s", "", "z"], repeat=n)
]


@settings(max_examples=300)
@given(topic_filters(), templates())
@example("a/", "a/{rest...}")  # a rest parameter never takes the one empty level (found by CI)
def test_intersects_reference(topic_filter: str, template: str) -> None:
    """Brute force: is there a topic name (from a small universe) matching both?"""
    compiled = AddressTemplate.compile(template)
    witness = any(
        filter_matches(topic_filter, n) and compiled.match(n) is not None for n in UNIVERSE
    )
    assert compiled.intersects(topic_filter) == witness


@pytest.mark.parametrize(
    ("topic_filter", "name", "matches"),
    [
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/#", "sport", True),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "$SYS/uptime", False),
        ("+/monitor/Clients", "$SYS/monitor/Clients", False),
        ("$SYS/#", "$SYS/uptime", True),
    ],
)
def test_spec_examples(topic_filter: str, name: str, matches: bool) -> None:
    """The examples of MQTT 5 section 4.7."""
    assert filter_matches(topic_filter, name) is matches


@pytest.mark.parametrize("bad", ["sport/tennis#", "sport/#/ranking", "sport+", "", "a/\x00"])
def test_invalid_filters(bad: str) -> None:
    with pytest.raises(TopicError):
        validate_filter(bad)


def test_shared_subscriptions() -> None:
    assert split_shared("$share/g1/scores/#") == ("g1", "scores/#")
    assert split_shared("scores/#") == (None, "scores/#")
    with pytest.raises(TopicError):
        split_shared("$share/g1")


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("a/{x}/{x}", "twice"),
        ("a/{rest...}/b", "last level"),
        ("a/x{y}", "whole level"),
        ("a/+", r"not \+ or #"),
    ],
)
def test_bad_templates(template: str, error: str) -> None:
    with pytest.raises(TemplateError, match=error):
        AddressTemplate.compile(template)


def test_specificity_orders_catch_all_last() -> None:
    specific = AddressTemplate.compile("stadium/{match}/score")
    catch_all = AddressTemplate.compile("{topic...}")
    assert specific.specificity > catch_all.specificity
