"""Strict JSON: what Python's json module lets through and money cannot take (no broker)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.model import strict_json
from bridge.model.strict_json import StrictJsonError

REFUSED = [
    (b'{"amount":NaN}', "/amount", "NaN is not a JSON number"),
    (b'{"amount":Infinity}', "/amount", "Infinity is not a JSON number"),
    (b'{"bet":{"amount":-Infinity}}', "/bet/amount", "-Infinity is not a JSON number"),
    (b'{"amount":1e999}', "/amount", "out of range"),
    (b'{"amount":-1.5e400}', "/amount", "out of range"),
    (b'{"amount":5,"amount":-5}', "/amount", "more than once"),
    (b'[0,{"legs":[1.5,NaN]}]', "/1/legs/1", "NaN"),
    (b'{"a/b":{"c~d":NaN}}', "/a~1b/c~0d", "NaN"),
    (b"NaN", "", "NaN"),
    (b"{nope", "", "not valid JSON"),
    (b"\xff\xfe", "", "not UTF-8"),
    (b"1" * 5000, "", "not acceptable JSON"),
]


@pytest.mark.parametrize(("text", "pointer", "detail"), REFUSED)
def test_refused_with_the_pointer_of_the_member_at_fault(text, pointer, detail) -> None:
    with pytest.raises(StrictJsonError) as refused:
        strict_json.loads(text)
    assert refused.value.pointer == pointer
    assert detail in refused.value.detail


def test_the_standard_library_would_have_taken_them() -> None:
    assert math.isnan(json.loads(b'{"amount":NaN}')["amount"])
    assert json.loads(b'{"amount":1e999}')["amount"] == math.inf
    assert json.loads(b'{"amount":5,"amount":-5}') == {"amount": -5}


finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(finite_json)
def test_every_finite_document_round_trips(value) -> None:
    assert strict_json.loads(strict_json.dumps(value)) == value
    assert strict_json.loads(json.dumps(value)) == value


@pytest.mark.parametrize("value", [math.nan, math.inf, {"odds": [1.5, -math.inf]}])
def test_dumps_never_writes_a_non_json_number(value) -> None:
    with pytest.raises(ValueError):
        strict_json.dumps(value)


def test_canonical_ignores_member_order_and_white_space_not_values() -> None:
    one = strict_json.loads(b'{"team": "home", "amount": 5, "legs": [1, 2]}')
    two = strict_json.loads(b'{"legs":[1,2],"amount":5,"team":"home"}')
    assert strict_json.canonical(one) == strict_json.canonical(two)
    assert strict_json.canonical(one) != strict_json.canonical({**two, "legs": [2, 1]})
    assert strict_json.canonical({"amount": 5}) != strict_json.canonical({"amount": 5.0})
