"""How routing.toml's problems are found and told: each at its file, line and field path.

The JSON Schema (config.schema.json) finds what it can; :class:`Checker` collects those and the
problems found while building typed settings (bridge/model/config.py), one per value, each at the
line of the value at fault (bridge/model/toml_lines.py), and :func:`by_line` puts them in file
order. :func:`without_invalid` lets the building go on past values the schema refused, so a
person sees every problem at once.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jsonschema

from bridge.model.toml_lines import TomlLines


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """routing.toml is not valid; ``problems`` lists every problem found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def load_schema() -> dict[str, Any]:
    text = resources.files("bridge.model").joinpath("config.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def by_line(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """In file order: a person fixes a file from the top."""
    return sorted(problems, key=lambda p: (p.line if p.line is not None else 0, p.path))


def toml_syntax_problem(name: str, exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    message = str(exc)
    line = None
    if "(at line " in message:
        try:
            line = int(message.split("(at line ")[1].split(",")[0])
        except ValueError:
            line = None
        message = message.split(" (at line ")[0]
    return ConfigProblem(name, line, "", f"TOML syntax: {message}")


def _known_keys(error: jsonschema.ValidationError) -> set[str]:
    known = set(error.schema.get("properties", {}))
    for part in error.schema.get("allOf", []):
        known.update(part.get("properties", {}))
        ref = part.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            known.update(load_schema()["$defs"][ref.split("/")[-1]].get("properties", {}))
    return known


def _unknown_keys(error: jsonschema.ValidationError) -> list[str]:
    if not isinstance(error.instance, dict):
        return []
    known = _known_keys(error)
    return sorted(k for k in error.instance if k not in known)


SchemaProblem = tuple[list[str | int], str, str]  # path, message, the JSON Schema keyword

# A value refused by one of these still has the type the builder expects (a string outside an
# enum, a number out of range), so it stays in for the checks that need built settings.
_RIGHT_TYPE_KEYWORDS = frozenset(
    {
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "uniqueItems",
        "multipleOf",
        "additionalProperties",  # unknown fields: the builder ignores them
        "unevaluatedProperties",
    }
)


def schema_problems(error: jsonschema.ValidationError) -> list[SchemaProblem]:
    """What one schema error means to a person: at which path, and what is wrong there."""
    path: list[str | int] = list(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        # At the unknown key's own line, one problem per key. (An unevaluated-properties error
        # with no unknown key is the echo of another error in the same table, reported on its
        # own: not a problem of its own.)
        known = _known_keys(error)
        return [
            ([*path, extra], "unknown field" + did_you_mean(extra, known), error.validator)
            for extra in _unknown_keys(error)
        ]
    if error.validator in ("oneOf", "anyOf") and error.context:
        alternatives = error.context
        if all(e.validator == "required" and not e.relative_path for e in alternatives):
            names = ", ".join(str(e.validator_value[0]) for e in alternatives)
            return [(path, f"needs one of: {names}", "anyOf")]
        if all(e.validator == "type" and not e.relative_path for e in alternatives):
            kinds = " or ".join(dict.fromkeys(str(e.validator_value) for e in alternatives))
            return [(path, f"{error.instance!r} is not of type {kinds}", "type")]
        # The alternative the value came closest to (an array of [[routes.http]] tables: the
        # array one), down to the element and field at fault, not "not valid under any".
        best = jsonschema.exceptions.best_match([error])  # descends to the deepest
        if best is not None and best is not error:
            return schema_problems(best)
    hint = error.schema.get("x-problem") if isinstance(error.schema, dict) else None
    if error.validator == "pattern" and hint:
        # A regular expression says little to a person: the schema says what is expected.
        return [(path, f"{error.instance!r}: {hint}", "pattern")]
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        return [(path, f"{error.instance!r} is not one of {allowed}", "enum")]
    return [(path, error.message, str(error.validator))]


_MAX_PRUNING_ROUNDS = 20


def without_invalid(
    raw: Mapping[str, Any], validator: jsonschema.protocols.Validator, checker: Checker
) -> dict[str, Any]:
    """A copy of ``raw`` without the values the schema refused, so the checks that need built
    settings can still run on everything else (and need not guard against every wrong type).

    A value of the wrong type is removed where it stands (a table falls back to its default); a table
    that then lacks a required field goes as a whole, except a route, which stays in place so
    its other fields are still checked and its index matches the file. Removing can expose
    another problem (a required field now missing), so this repeats until nothing is refused.
    """
    document: dict[str, Any] = copy.deepcopy(dict(raw))
    for _ in range(_MAX_PRUNING_ROUNDS):
        removed = False
        for error in validator.iter_errors(document):
            for path, _message, keyword in schema_problems(error):
                if keyword in _RIGHT_TYPE_KEYWORDS:
                    continue
                if keyword == "required" and _is_route(path):
                    continue  # built with what it has; the missing field is reported
                if _remove(document, path):
                    removed = True
                    checker.removed.add(tuple(path))
        if not removed:
            break
    return document


def _is_route(path: Sequence[str | int]) -> bool:
    return len(path) == 2 and path[0] == "routes" and isinstance(path[1], int)


def _remove(document: dict[str, Any], path: Sequence[str | int]) -> bool:
    if not path:
        return False  # the document itself (no routes): the builder copes with what is left
    if _is_route(path):
        routes = document["routes"]
        index = int(path[1])
        if routes[index] is None:
            return False
        routes[index] = None  # keeps the other routes' indices: they name file positions
        return True
    parent: Any = document
    for step in path[:-1]:
        try:
            parent = parent[step]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(parent, dict) and path[-1] in parent:
        del parent[path[-1]]
        return True
    if isinstance(parent, list):
        return _remove(document, path[:-1])  # an element: the whole list goes
    return False


@dataclass
class Checker:
    file: str
    text: str
    problems: list[ConfigProblem] = field(default_factory=list)
    removed: set[tuple[str | int, ...]] = field(default_factory=set)  # refused by the schema

    def refused(self, route: tuple[str | int, ...]) -> bool:
        """Whether the schema refused the key or a header of ``route`` (they were left out)."""
        return any(
            p[: len(route) + 1] in ((*route, "key"), (*route, "headers")) for p in self.removed
        )

    def add(self, path: Sequence[str | int], message: str, within: int | None = None) -> None:
        """``within``: the line of a multi-line value (an expression) the problem is on."""
        dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        if any(p.path == dotted for p in self.problems):
            return  # one problem per value: the first found (the schema's) is the cause
        line = self._lines.line_of(path)
        if line is not None and within is not None:
            if self._opens_multiline(line):
                line += 1  # the value starts on the next line (TOML drops that newline)
            line += within - 1
        self.problems.append(ConfigProblem(self.file, line, dotted, message))

    def _opens_multiline(self, line: int) -> bool:
        """Whether ``line`` ends with the opening delimiter of a multi-line string."""
        lines = self.text.splitlines()
        if not 0 < line <= len(lines):
            return False
        text = lines[line - 1].rstrip()
        return (text.endswith("'''") or text.endswith('"""')) and text.count(text[-3:]) == 1

    @functools.cached_property
    def _lines(self) -> TomlLines:
        return TomlLines(self.text)  # a second parse, only for a file with problems


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
