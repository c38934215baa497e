"""The demo's fixture list: which teams play, how strong they are, and match ids.

Scoreboards and the odds engine share it the way a real deployment shares a fixtures feed:
a scoreboard only reports ``match`` + score, the engine looks the teams up here.
"""

from __future__ import annotations

from dataclasses import dataclass

# (home, away, home strength, away strength): strength scales expected goals (1.0 = average).
PAIRINGS: tuple[tuple[str, str, float, float], ...] = (
    ("Lions", "Tigers", 1.25, 0.9),
    ("Eagles", "Sharks", 1.0, 1.05),
    ("Wolves", "Bears", 0.85, 1.2),
    ("Falcons", "Rhinos", 1.1, 1.1),
    ("Comets", "Pirates", 1.3, 0.75),
    ("Owls", "Vipers", 0.95, 1.0),
)


@dataclass(frozen=True, slots=True)
class Fixture:
    id: str
    home: str
    away: str
    home_strength: float
    away_strength: float


def fixture(slot: int, round_number: int) -> Fixture:
    """The fixture played in scoreboard ``slot`` in its ``round_number``-th match."""
    home, away, hs, as_ = PAIRINGS[slot % len(PAIRINGS)]
    if round_number % 2:  # return leg: sides swap
        home, away, hs, as_ = away, home, as_, hs
    return Fixture(f"{home.lower()}-{away.lower()}-{round_number}", home, away, hs, as_)


def fixture_by_id(match_id: str) -> Fixture | None:
    """Inverse of :func:`fixture`; None for an id that is not the demo's."""
    try:
        home, away, round_text = match_id.split("-")
        round_number = int(round_text)
    except ValueError:
        return None
    for slot, (first, second, _, _) in enumerate(PAIRINGS):
        if {home, away} == {first.lower(), second.lower()}:
            found = fixture(slot, round_number)
            return found if found.id == match_id else None
    return None
