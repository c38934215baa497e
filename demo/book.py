"""The bet processor's decisions, without I/O: verify a bet, settle a match, drop duplicates.

:class:`Book` holds what the processor knows (balances, matches with their current odds, bets,
replies already given by correlation id) and returns *records to write* — the processor writes
them to Kafka. Rebuilding a Book from the topics it wrote (``user-profiles``,
``bets-verified``) and ``matches`` gives the same decisions after a restart.

Replies follow the HTTP front-end's request-reply contract: a status (``:status`` header) and a
JSON body, ``application/problem+json`` for refusals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STARTING_BALANCE = 1000.0
MAX_ODDS_AGE_S = 120.0  # odds older than this are stale: the engine may be down
OPEN_STATUSES = ("SCHEDULED", "LIVE")
PENDING, WON, LOST, VOID = "PENDING", "WON", "LOST", "VOID"


@dataclass(frozen=True, slots=True)
class Record:
    """A record to write: Kafka topic, key, JSON value."""

    topic: str
    key: str
    value: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Mapping[str, Any]

    @property
    def content_type(self) -> str:
        return "application/json" if self.status < 400 else "application/problem+json"


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: Reply
    records: tuple[Record, ...] = ()
    duplicate: bool = False


@dataclass
class Book:
    profiles_topic: str = "user-profiles"
    verified_topic: str = "bets-verified"
    balances: dict[str, float] = field(default_factory=dict)
    matches: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    bets: dict[str, dict[str, Any]] = field(default_factory=dict)  # bet id -> verified bet
    replies: dict[str, Reply] = field(default_factory=dict)  # correlation id -> reply given

    # -- learning state ---------------------------------------------------------------------

    def learn_match(self, match: Mapping[str, Any]) -> None:
        self.matches[str(match["id"])] = match

    def learn_profile(self, profile: Mapping[str, Any]) -> None:
        self.balances[str(profile["userId"])] = float(profile["balance"])

    def learn_bet(self, bet: Mapping[str, Any]) -> None:
        """A verified bet read back from Kafka: known, and its correlation id answered."""
        self.bets[str(bet["id"])] = dict(bet)
        self.replies.setdefault(str(bet["id"]), Reply(201, dict(bet)))

    def open_account(self, user: str) -> Record | None:
        """A profile record for a user seen for the first time (None if known)."""
        if user in self.balances:
            return None
        self.balances[user] = STARTING_BALANCE
        return self._profile(user)

    # -- placing ----------------------------------------------------------------------------

    def place(self, bet: Mapping[str, Any], correlation: str, now: float) -> Outcome:
        """Verify and record a bet; a correlation id seen before gets its first reply again."""
        if correlation in self.replies:
            return Outcome(self.replies[correlation], duplicate=True)
        records: list[Record] = []
        opened = self.open_account(str(bet["userId"]))
        if opened is not None:
            records.append(opened)
        refusal = self._refusal(bet, now)
        if refusal is not None:
            self.replies[correlation] = refusal
            return Outcome(refusal, tuple(records))
        user = str(bet["userId"])
        match = self.matches[str(bet["matchId"])]
        odds = float(match["odds"][bet["team"]])
        amount = float(bet["amount"])
        verified = {
            "id": correlation,
            "userId": user,
            "matchId": bet["matchId"],
            "team": bet["team"],
            "teamName": match.get(bet["team"], bet["team"]),
            "odds": odds,
            "amount": amount,
            "potentialWinnings": _money(amount * odds),
            "status": PENDING,
            "placedAt": now,
            "settledAt": None,
        }
        self.bets[correlation] = verified
        self.balances[user] = _money(self.balances[user] - amount)
        records += [Record(self.verified_topic, user, verified), self._profile(user)]
        reply = Reply(201, verified)
        self.replies[correlation] = reply
        return Outcome(reply, tuple(records))

    def _refusal(self, bet: Mapping[str, Any], now: float) -> Reply | None:
        # Defence in depth: the bridge refuses NaN and infinities at the edge, but a bet that
        # reached Kafka some other way must not turn a balance into NaN for good.
        amount = bet.get("amount")
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or not math.isfinite(amount)
            or amount <= 0
        ):
            return _problem(
                422, "invalid-amount", f"the stake must be a finite number above 0, not {amount!r}"
            )
        seen_odds = bet.get("odds")
        if seen_odds is not None and (
            not isinstance(seen_odds, int | float) or not math.isfinite(seen_odds)
        ):
            return _problem(
                422, "invalid-odds", f"the odds must be a finite number, not {seen_odds!r}"
            )
        match = self.matches.get(str(bet["matchId"]))
        if match is None:
            return _problem(422, "unknown-match", f"no match {bet['matchId']!r}")
        if match.get("status") not in OPEN_STATUSES:
            return _problem(409, "match-closed", f"match {match['id']} is {match.get('status')}")
        current = (match.get("odds") or {}).get(bet["team"])
        if current is None:
            return _problem(409, "no-odds", "no odds for this match yet")
        if now - float(match.get("oddsAt", 0)) > MAX_ODDS_AGE_S:
            return _problem(409, "stale-odds", "the odds are out of date; try again shortly")
        seen = bet.get("odds")
        if seen is not None and not math.isclose(float(seen), float(current), abs_tol=0.005):
            return _problem(
                409, "odds-changed", f"the odds changed from {seen} to {current}", odds=current
            )
        balance = self.balances.get(str(bet["userId"]), 0.0)
        if float(bet["amount"]) > balance:
            return _problem(
                422, "insufficient-balance", f"balance {balance:.2f} < stake", balance=balance
            )
        return None

    def refuse(self, correlation: str, status: int, kind: str, detail: str) -> Outcome:
        """Refuse a request outright (remembered, so a duplicate gets the same answer)."""
        if correlation in self.replies:
            return Outcome(self.replies[correlation], duplicate=True)
        reply = _problem(status, kind, detail)
        self.replies[correlation] = reply
        return Outcome(reply)

    # -- settling ---------------------------------------------------------------------------

    def settle(self, match: Mapping[str, Any], now: float) -> list[Record]:
        """Records settling every pending bet of a completed (or canceled) match."""
        self.learn_match(match)
        status = match.get("status")
        if status not in ("COMPLETED", "CANCELED"):
            return []
        score = match.get("score") or {}
        home, away = int(score.get("home", 0)), int(score.get("away", 0))
        winner = (
            None if status == "CANCELED" or home == away else ("home" if home > away else "away")
        )
        records: list[Record] = []
        credited: list[str] = []
        for bet in self.bets.values():
            if bet["matchId"] != match["id"] or bet["status"] != PENDING:
                continue
            bet["settledAt"] = now
            user = str(bet["userId"])
            if winner is None:
                bet["status"] = VOID  # draw no bet: the stake comes back
                self.balances[user] = _money(self.balances.get(user, 0) + bet["amount"])
            elif bet["team"] == winner:
                bet["status"] = WON
                self.balances[user] = _money(self.balances.get(user, 0) + bet["potentialWinnings"])
            else:
                bet["status"] = LOST
            records.append(Record(self.verified_topic, user, dict(bet)))
            if bet["status"] != LOST and user not in credited:
                credited.append(user)
        # One balance record per user, after the bets: the page never shows a half-settled sum.
        return records + [self._profile(user) for user in credited]

    def _profile(self, user: str) -> Record:
        return Record(self.profiles_topic, user, {"userId": user, "balance": self.balances[user]})


def _problem(status: int, kind: str, detail: str, **extra: Any) -> Reply:
    return Reply(
        status,
        {
            "type": f"https://edgebridge.dev/demo/problems/{kind}",
            "title": kind,
            "status": status,
            "detail": detail,
            **extra,
        },
    )


def _money(value: float) -> float:
    return round(value, 2)
