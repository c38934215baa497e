"""The ``Prefer`` request header (RFC 7240): ``respond-async`` and ``wait=N``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preferences:
    respond_async: bool = False
    wait_s: float | None = None  # None: the client expressed no preference

    def wait(self, default: float, cap: float) -> float:
        """How long to wait: the client's ``wait`` (or ``default``), never beyond ``cap``."""
        wanted = default if self.wait_s is None else self.wait_s
        return max(0.0, min(wanted, cap))


def parse_prefer(values: list[str]) -> Preferences:
    """Parse every ``Prefer`` header; unknown or malformed preferences are ignored (RFC 7240 §2)."""
    respond_async = False
    wait_s: float | None = None
    for value in values:
        for item in value.split(","):
            token = item.split(";", 1)[0].strip()
            name, _, argument = token.partition("=")
            name = name.strip().lower()
            argument = argument.strip().strip('"')
            if name == "respond-async":
                respond_async = True
            elif name == "wait" and argument:
                try:
                    seconds = float(argument)
                except ValueError:
                    continue
                if seconds >= 0 and seconds == seconds:  # not NaN
                    wait_s = seconds
    return Preferences(respond_async, wait_s)
