"""The odds model: from the score and the minute to two-way decimal odds, with a bookmaker margin.

Goals in the remaining time are Poisson with a rate proportional to each side's strength and
the time left; the final goal difference decides. A draw refunds the stake (two-way market,
"draw no bet"), so the odds price home vs away only. Pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MATCH_MINUTES = 90
GOALS_PER_MATCH = 1.4  # expected goals of an average side over a whole match
MARGIN = 0.05
MIN_ODDS = 1.01
MAX_ODDS = 50.0
_MAX_GOALS = 12


@dataclass(frozen=True, slots=True)
class Odds:
    home: float
    away: float


def _poisson(rate: float) -> list[float]:
    return [math.exp(-rate) * rate**k / math.factorial(k) for k in range(_MAX_GOALS + 1)]


def win_probabilities(
    home_goals: int, away_goals: int, minute: int, home_strength: float, away_strength: float
) -> tuple[float, float, float]:
    """P(home wins), P(draw), P(away wins) at full time, given the state at ``minute``."""
    left = max(0, MATCH_MINUTES - minute) / MATCH_MINUTES
    home_more = _poisson(GOALS_PER_MATCH * home_strength * left)
    away_more = _poisson(GOALS_PER_MATCH * away_strength * left)
    lead = home_goals - away_goals
    home = draw = away = 0.0
    for h, ph in enumerate(home_more):
        for a, pa in enumerate(away_more):
            final = lead + h - a
            p = ph * pa
            if final > 0:
                home += p
            elif final < 0:
                away += p
            else:
                draw += p
    total = home + draw + away
    return home / total, draw / total, away / total


def price(probability: float) -> float:
    """Decimal odds for a probability, with the margin, rounded to cents, within bounds."""
    if probability <= 0:
        return MAX_ODDS
    # The margin weighs most where the outcome is open (p near 1/2) and fades for near-certain
    # outcomes, so a clear favourite still pays more than its stake.
    raw = 1.0 / (probability + 2 * MARGIN * probability * (1.0 - probability))
    return round(min(MAX_ODDS, max(MIN_ODDS, raw)), 2)


def odds(
    home_goals: int, away_goals: int, minute: int, home_strength: float, away_strength: float
) -> Odds:
    """Draw-no-bet odds for home and away."""
    home, _draw, away = win_probabilities(
        home_goals, away_goals, minute, home_strength, away_strength
    )
    decided = home + away
    if decided <= 0:  # a draw is certain: nothing left to price
        return Odds(MIN_ODDS, MIN_ODDS)
    return Odds(price(home / decided), price(away / decided))
