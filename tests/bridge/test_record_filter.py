"""Filters and jurisdiction as data (issue 16 items 3 and 6): declarations checked by
``edgebridge check`` with their line, client values typed and made canonical, records matched,
and jurisdiction decisions naming their rule. Broker-free."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.model.config import ConfigError, parse_config
from bridge.model.jurisdiction import Jurisdiction, RoleException, caller_region, decide
from bridge.model.message import Message
from bridge.model.record_filter import (
    FilterError,
    FilterIndex,
    FilterParam,
    FilterSpec,
    RecordView,
)

SPEC = FilterSpec(
    (
        FilterParam("market", "/market"),
        FilterParam("min_odds", "/odds/home", "gte", "number"),
        FilterParam("league", "header:league", "in"),
        FilterParam("match", "key", "prefix"),
    )
)


def record(value: bytes, key: bytes = b"m-1", league: bytes = b"epl") -> Message:
    return Message("odds", key, value, (("league", league),))


def test_equal_values_make_equal_canonical_filters() -> None:
    one = SPEC.bind({"min_odds": "2.50", "market": "1x2", "league": "epl,laliga"})
    two = SPEC.bind({"league": "laliga,epl", "market": "1x2", "min_odds": "2.5"})
    assert one == two and hash(one) == hash(two)
    assert SPEC.bind({"market": "ou"}) != one
    assert SPEC.bind({}) is None


def test_a_filter_matches_key_header_and_json_fields() -> None:
    wanted = SPEC.bind({"market": "1x2", "min_odds": "2", "league": "epl,seriea", "match": "m-"})
    assert wanted is not None
    assert wanted.matches_record(record(b'{"market":"1x2","odds":{"home":2.0}}'))
    assert not wanted.matches_record(record(b'{"market":"1x2","odds":{"home":1.9}}'))
    assert not wanted.matches_record(record(b'{"market":"ou","odds":{"home":3}}'))
    assert not wanted.matches_record(record(b'{"market":"1x2","odds":{"home":3}}', b"x-1"))
    assert not wanted.matches_record(
        record(b'{"market":"1x2","odds":{"home":3}}', league=b"bundesliga")
    )
    # Not JSON, NaN, a missing field: never a match (and never an error on the hot path).
    assert not wanted.matches_record(record(b"not json"))
    assert not wanted.matches_record(record(b'{"market":"1x2","odds":{"home":NaN}}'))
    assert not wanted.matches_record(record(b'{"market":"1x2"}'))


@pytest.mark.parametrize(
    ("values", "parameter"),
    [
        ({"min_odds": "NaN"}, "min_odds"),
        ({"min_odds": "high"}, "min_odds"),
        ({"min_odds": "Infinity"}, "min_odds"),
        ({"market": ""}, "market"),
        ({"league": ""}, "league"),
    ],
)
def test_bad_values_are_refused_with_the_parameter(values: dict[str, str], parameter: str) -> None:
    with pytest.raises(FilterError) as caught:
        SPEC.bind(values)
    assert caught.value.parameter == parameter


ROUTE = """
[[routes]]
name = "odds"
topic = "odds"
key = "{{match}}"
[routes.sse]
path = "/odds"
{filters}
"""


def check(filters: str) -> list[str]:
    text = ROUTE.format(filters=filters)
    try:
        parse_config(text, Path("routing.toml"), {})
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_check_reports_a_bad_filter_declaration_at_its_line() -> None:
    assert check('[[routes.filters]]\nname = "market"\nsource = "/market"') == []
    problems = check('[[routes.filters]]\nname = "min"\nsource = "/odds"\noperator = "gte"')
    assert problems == [
        "routing.toml:11: routes[0].filters[0].operator: operator 'gte' compares numbers: "
        'use type = "number"'
    ]
    problems = check('[[routes.filters]]\nname = "m"\nsource = "market"')
    assert len(problems) == 1 and "routing.toml:10: routes[0].filters[0].source" in problems[0]
    problems = check('[[routes.filters]]\nname = "from"\nsource = "/a"')
    assert len(problems) == 1 and "reserved" in problems[0]


def test_jurisdiction_decisions_name_their_rule() -> None:
    rules = Jurisdiction(
        "odds-gb",
        publish=("gb",),
        read=("gb", "ie"),
        local=True,
        exceptions=(RoleException("regulator", read=("*",)),),
    )
    refused = decide(rules, "read", "fr", ["bettor"])
    assert not refused.allowed and refused.rule == "routes[odds-gb].jurisdiction.read"
    allowed = decide(rules, "read", "ie", [])
    assert allowed.allowed and allowed.sees == "ie"
    assert allowed.rule == "routes[odds-gb].jurisdiction.read + routes[odds-gb].jurisdiction.local"
    regulator = decide(rules, "read", "fr", ["regulator"])
    assert regulator.allowed and regulator.sees is None
    assert regulator.rule == "routes[odds-gb].jurisdiction.exceptions[0] (role regulator).read"
    assert not decide(rules, "publish", "ie", []).allowed
    assert not decide(rules, "read", None, []).allowed  # local, and nobody knows where from
    assert caller_region({"country": "IE"}, "country", "gb") == "ie"
    assert caller_region({}, "country", "GB") == "gb"


def test_the_index_finds_every_matching_filter_and_only_checks_candidates() -> None:
    specs = [SPEC.bind({"market": m}) for m in ("1x2", "ou", "btts")]
    numbers = SPEC.bind({"min_odds": "2"})  # no text equality: a candidate for every record
    entries = [(f, i) for i, f in enumerate([*specs, numbers]) if f is not None]
    index = FilterIndex(entries)

    def matching(value: bytes) -> list[int]:
        view = RecordView(record(value))
        return sorted(i for f, i in index.candidates(view) if f.matches(view))

    def candidates(value: bytes) -> int:
        return len(list(index.candidates(RecordView(record(value)))))

    assert matching(b'{"market":"ou","odds":{"home":3}}') == [1, 3]
    assert candidates(b'{"market":"ou","odds":{"home":3}}') == 2  # not all 4
    assert matching(b'{"market":"none","odds":{"home":1}}') == []
    assert candidates(b'{"odds":{"home":1}}') == 1  # no market: only the unindexed filter
    # Every filter's own answer agrees with the index's, record by record.
    for value in (b'{"market":"1x2","odds":{"home":2}}', b'{"market":"btts"}', b"[]", b"x"):
        view = RecordView(record(value))
        direct = sorted(i for f, i in entries if f.matches(view))
        assert matching(value) == direct


def test_check_refuses_jurisdiction_when_no_caller_can_have_a_region() -> None:
    route = '[[routes]]\nname = "gb"\ntopic = "gb"\n[routes.sse]\npath = "/gb"\n'
    rules = '[routes.jurisdiction]\nread = ["gb"]\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(route + rules, Path("routing.toml"), {})
    assert [str(p) for p in caught.value.problems] == [
        "routing.toml:6: routes[0].jurisdiction: no caller has a region: set [bridge] region "
        "(or a listener's region) or [guard] region_claim"
    ]
    parse_config('[bridge]\nregion = "gb"\n' + route + rules, Path("routing.toml"), {})


def test_openapi_names_the_filters_and_the_451_of_the_shipped_routes() -> None:
    from bridge.apidocs.openapi import openapi_document
    from bridge.model.config import load_config

    document = openapi_document(load_config(Path(__file__).parents[2] / "routing.toml"))
    stream = document["paths"]["/odds"]["get"]
    query = {p["name"]: p["schema"] for p in stream["parameters"] if p["in"] == "query"}
    assert query["match"] == {"type": "string"} and query["min_home"] == {"type": "number"}
    assert "451" in document["paths"]["/in-play/gb"]["get"]["responses"]
    assert "451" not in stream["responses"]
