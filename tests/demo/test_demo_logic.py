"""The demo services' decisions, as pure functions: odds, match simulation, fixtures, the book."""

from __future__ import annotations

import math
import random

import pytest

from demo import odds as odds_model
from demo.book import MAX_ODDS_AGE_S, STARTING_BALANCE, Book
from demo.fixtures import PAIRINGS, fixture, fixture_by_id
from demo.match_sim import before_kick_off, next_score
from demo.odds_engine import priced

NOW = 1_000_000.0

# -- odds ------------------------------------------------------------------------------------


def test_probabilities_sum_to_one_and_favour_the_stronger_side() -> None:
    home, draw, away = odds_model.win_probabilities(0, 0, 0, 1.3, 0.8)
    assert home + draw + away == pytest.approx(1.0)
    assert home > away


def test_a_goal_shortens_the_scorers_odds() -> None:
    level = odds_model.odds(0, 0, 30, 1.0, 1.0)
    ahead = odds_model.odds(1, 0, 30, 1.0, 1.0)
    assert ahead.home < level.home and ahead.away > level.away


def test_a_lead_is_worth_more_the_later_it_is() -> None:
    early = odds_model.odds(1, 0, 10, 1.0, 1.0)
    late = odds_model.odds(1, 0, 85, 1.0, 1.0)
    assert late.home < early.home


def test_odds_carry_the_margin_and_stay_in_bounds() -> None:
    even = odds_model.odds(0, 0, 0, 1.0, 1.0)
    assert even.home == even.away == pytest.approx(1 / (0.5 * 1.05), abs=0.01)
    decided = odds_model.odds(5, 0, 89, 1.0, 1.0)
    assert decided.home == odds_model.MIN_ODDS and decided.away == odds_model.MAX_ODDS
    favourite = odds_model.odds(2, 0, 41, 1.0, 1.0)  # likely, not certain: still pays
    assert 1.01 < favourite.home < 1.2


def test_a_certain_draw_prices_nothing_above_the_minimum() -> None:
    final = odds_model.odds(1, 1, 90, 1.0, 1.0)
    assert final.home == final.away == odds_model.MIN_ODDS


# -- fixtures and the match simulation -------------------------------------------------------


@pytest.mark.parametrize("slot", range(len(PAIRINGS)))
@pytest.mark.parametrize("round_number", [0, 1, 7])
def test_fixture_ids_round_trip(slot: int, round_number: int) -> None:
    match = fixture(slot, round_number)
    assert fixture_by_id(match.id) == match


def test_unknown_match_ids_are_not_fixtures() -> None:
    assert fixture_by_id("lions-sharks-0") is None
    assert fixture_by_id("lions-tigers-x") is None
    assert fixture_by_id("lions-tigers-1") is None  # round 1 is the return leg: tigers-lions-1
    assert fixture_by_id("nonsense") is None


def test_a_match_reports_every_minute_then_completes() -> None:
    match = fixture(0, 0)
    rng = random.Random(1)
    score = before_kick_off(match)
    reports = [score]
    while score.status != "COMPLETED":
        score = next_score(score, match, rng)
        reports.append(score)
    minutes = [r.minute for r in reports if r.status == "LIVE"]
    assert minutes == list(range(1, 91))
    assert reports[0].status == "SCHEDULED" and reports[-1].minute == 90
    goals = [(r.home, r.away) for r in reports]
    assert goals == sorted(goals, key=lambda g: g[0] + g[1])  # scores never go down
    assert next_score(score, match, rng) == score


# -- the odds engine's record building -------------------------------------------------------


def test_a_score_becomes_odds_and_a_match_record() -> None:
    match = fixture(1, 0)
    result = priced({"match": match.id, "home": 1, "away": 0, "minute": 60, "status": "LIVE"}, NOW)
    assert result is not None
    odds_record, match_record = result
    assert match_record["home"] == match.home and match_record["score"] == {"home": 1, "away": 0}
    assert match_record["odds"] == odds_record["odds"]
    assert match_record["odds"]["home"] < match_record["odds"]["away"]


def test_a_completed_match_closes_its_market() -> None:
    match = fixture(1, 0)
    _, record = priced(
        {"match": match.id, "home": 1, "away": 0, "minute": 90, "status": "COMPLETED"}, NOW
    )  # type: ignore[misc]
    assert record["odds"] is None


def test_a_score_for_an_unknown_match_is_not_priced() -> None:
    assert priced({"match": "x-y-1", "home": 0, "away": 0, "minute": 1}, NOW) is None


# -- the book: verification, dedup, settlement -----------------------------------------------


def live_match(match_id: str = "m1", status: str = "LIVE", **changes: object) -> dict:
    record = {
        "id": match_id,
        "home": "Lions",
        "away": "Tigers",
        "status": status,
        "score": {"home": 0, "away": 0},
        "minute": 10,
        "odds": {"home": 1.8, "away": 2.2},
        "oddsAt": NOW,
    }
    record.update(changes)
    return record


def bet(
    amount: float = 100, team: str = "home", odds: float | None = 1.8, **changes: object
) -> dict:
    placed = {"userId": "alice", "matchId": "m1", "team": team, "amount": amount}
    if odds is not None:
        placed["odds"] = odds
    placed.update(changes)
    return placed


def book_with(match: dict | None = None) -> Book:
    book = Book()
    book.learn_match(match or live_match())
    return book


def test_a_good_bet_is_verified_debited_and_recorded() -> None:
    book = book_with()
    outcome = book.place(bet(100), "c1", NOW)
    assert outcome.reply.status == 201 and not outcome.duplicate
    assert outcome.reply.body["potentialWinnings"] == 180.0
    assert book.balances["alice"] == STARTING_BALANCE - 100
    topics = [(r.topic, r.key) for r in outcome.records]
    # A first-time user's account is opened (profile), then the bet and the new balance.
    assert topics == [
        ("user-profiles", "alice"),
        ("bets-verified", "alice"),
        ("user-profiles", "alice"),
    ]
    assert outcome.records[-1].value == {"userId": "alice", "balance": 900.0}


def test_a_duplicate_correlation_id_gets_the_first_reply_and_changes_nothing() -> None:
    book = book_with()
    first = book.place(bet(100), "c1", NOW)
    again = book.place(bet(100), "c1", NOW + 1)
    assert again.duplicate and again.records == () and again.reply == first.reply
    assert book.balances["alice"] == 900.0


def test_a_refusal_is_remembered_for_its_correlation_id_too() -> None:
    book = book_with(live_match(status="COMPLETED"))
    first = book.place(bet(), "c1", NOW)
    book.learn_match(live_match())  # the match reopening must not change an answer given
    again = book.place(bet(), "c1", NOW)
    assert first.reply.status == again.reply.status == 409 and again.duplicate


def test_a_bet_above_the_balance_is_refused() -> None:
    book = book_with()
    outcome = book.place(bet(STARTING_BALANCE + 1), "c1", NOW)
    assert outcome.reply.status == 422
    assert outcome.reply.body["title"] == "insufficient-balance"
    assert book.balances["alice"] == STARTING_BALANCE
    assert [r.topic for r in outcome.records] == ["user-profiles"]  # only the account opening


@pytest.mark.parametrize("status", ["COMPLETED", "CANCELED"])
def test_a_bet_on_a_closed_match_is_refused(status: str) -> None:
    outcome = book_with(live_match(status=status)).place(bet(), "c1", NOW)
    assert (outcome.reply.status, outcome.reply.body["title"]) == (409, "match-closed")


def test_a_bet_on_an_unknown_match_is_refused() -> None:
    outcome = Book().place(bet(), "c1", NOW)
    assert (outcome.reply.status, outcome.reply.body["title"]) == (422, "unknown-match")


def test_a_bet_at_odds_that_moved_is_refused_with_the_new_odds() -> None:
    outcome = book_with().place(bet(odds=1.95), "c1", NOW)
    assert outcome.reply.status == 409
    assert outcome.reply.body["title"] == "odds-changed" and outcome.reply.body["odds"] == 1.8
    assert outcome.reply.content_type == "application/problem+json"


def test_a_bet_without_odds_takes_the_current_odds() -> None:
    outcome = book_with().place(bet(odds=None, team="away"), "c1", NOW)
    assert outcome.reply.status == 201 and outcome.reply.body["odds"] == 2.2


def test_stale_odds_refuse_bets() -> None:
    book = book_with(live_match(oddsAt=NOW - MAX_ODDS_AGE_S - 1))
    outcome = book.place(bet(), "c1", NOW)
    assert (outcome.reply.status, outcome.reply.body["title"]) == (409, "stale-odds")


def test_a_match_without_odds_refuses_bets() -> None:
    outcome = book_with(live_match(odds=None)).place(bet(), "c1", NOW)
    assert (outcome.reply.status, outcome.reply.body["title"]) == (409, "no-odds")


def test_settlement_pays_winners_refunds_draws_and_keeps_losers_stakes() -> None:
    book = book_with()
    book.place(bet(100, "home", 1.8), "win", NOW)
    book.place(bet(50, "away", 2.2), "lose", NOW)
    assert book.balances["alice"] == 850.0
    records = book.settle(live_match(status="COMPLETED", score={"home": 2, "away": 1}), NOW + 5)
    statuses = {r.value["id"]: r.value["status"] for r in records if r.topic == "bets-verified"}
    assert statuses == {"win": "WON", "lose": "LOST"}
    assert book.balances["alice"] == 850.0 + 180.0
    assert records[-1].value == {"userId": "alice", "balance": 1030.0}
    assert book.settle(live_match(status="COMPLETED", score={"home": 2, "away": 1}), NOW) == []


def test_a_draw_voids_bets_and_returns_stakes() -> None:
    book = book_with()
    book.place(bet(100), "c1", NOW)
    records = book.settle(live_match(status="COMPLETED", score={"home": 1, "away": 1}), NOW)
    assert records[0].value["status"] == "VOID" and book.balances["alice"] == STARTING_BALANCE


def test_a_live_update_settles_nothing() -> None:
    book = book_with()
    book.place(bet(100), "c1", NOW)
    assert book.settle(live_match(minute=50), NOW) == []


def test_a_rebuilt_book_drops_duplicates_answered_before_a_restart() -> None:
    book = book_with()
    outcome = book.place(bet(100), "c1", NOW)
    rebuilt = book_with()
    for record in outcome.records:
        if record.topic == "user-profiles":
            rebuilt.learn_profile(record.value)
        else:
            rebuilt.learn_bet(record.value)
    again = rebuilt.place(bet(100), "c1", NOW)
    assert again.duplicate and again.reply.status == 201 and rebuilt.balances["alice"] == 900.0


def test_refusing_outright_is_remembered() -> None:
    book = Book()
    first = book.refuse("c1", 403, "not-your-account", "no")
    assert first.reply.status == 403 and book.refuse("c1", 403, "x", "y").duplicate


@pytest.mark.parametrize("amount", [math.nan, math.inf, -math.inf, 0, -5, "10", True, None])
def test_a_stake_that_is_not_a_finite_positive_number_is_refused(amount: object) -> None:
    """Defence in depth behind the edge's strict JSON: a NaN stake would make the balance NaN."""
    book = book_with()
    outcome = book.place({**bet(), "amount": amount}, "c1", NOW)
    assert outcome.reply.status == 422
    assert outcome.reply.body["title"] == "invalid-amount"
    assert book.balances["alice"] == STARTING_BALANCE
    assert math.isfinite(book.balances["alice"])


def test_the_demo_never_writes_a_non_finite_number_to_kafka() -> None:
    from demo import kafka_io

    with pytest.raises(ValueError):
        kafka_io.encode({"balance": math.nan})
