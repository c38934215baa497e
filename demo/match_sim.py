"""A simulated match, minute by minute: what a stadium scoreboard reports. Pure functions.

Every minute of play produces exactly one score report, so a reader that saw minutes 12 and 14
of a match knows it missed one: the demo page and its browser test use that to prove that an
event stream resumes without a gap.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any

from demo.fixtures import Fixture
from demo.odds import GOALS_PER_MATCH, MATCH_MINUTES


@dataclass(frozen=True, slots=True)
class Score:
    match: str
    home: int
    away: int
    minute: int
    status: str  # SCHEDULED, LIVE, COMPLETED (schemas/score.json)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def before_kick_off(fixture: Fixture) -> Score:
    return Score(fixture.id, 0, 0, 0, "SCHEDULED")


def next_score(score: Score, fixture: Fixture, rng: random.Random) -> Score:
    """The report one minute later; a completed match stays completed."""
    if score.status == "COMPLETED":
        return score
    if score.minute >= MATCH_MINUTES:
        return replace(score, status="COMPLETED")
    per_minute = GOALS_PER_MATCH / MATCH_MINUTES
    home = score.home + (rng.random() < per_minute * fixture.home_strength)
    away = score.away + (rng.random() < per_minute * fixture.away_strength)
    return Score(score.match, home, away, score.minute + 1, "LIVE")
