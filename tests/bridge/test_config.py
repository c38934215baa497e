"""routing.toml: the shipped file is valid; broken files get file:line: field: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bridge.model.config import ConfigError, parse_config
from bridge.model.routing import RouteTable

REPO = Path(__file__).resolve().parents[2]

GOOD = """
[kafka]
bootstrap = "embedded"

[[routes]]
name = "scores"
topic = "scores"
key = "{match}"

[routes.mqtt]
topic = "stadium/{match}/score"

[routes.sse]
path = "/matches/{match}/scores"

[[routes]]
name = "any"
topic = "mqtt-messages"
key = "{topic}"

[routes.mqtt]
topic = "{topic...}"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Path("r.toml"), {})
    return [str(p) for p in caught.value.problems]


def test_good_config_builds_routes() -> None:
    config = parse_config(GOOD, REPO / "r.toml", {})
    table = RouteTable.from_config(config)
    match = table.mqtt.match("stadium/42/score")
    assert match is not None and match.target.name == "scores" and match.params == {"match": "42"}
    catch_all = table.mqtt.match("anything/else")
    assert catch_all is not None and catch_all.target.name == "any"
    assert [r.name for r in table.mqtt.intersecting("stadium/+/score")] == ["scores", "any"]
    assert [r.name for r in table.mqtt.intersecting("odds/#")] == ["any"]


def test_kafka_bootstrap_from_environment() -> None:
    config = parse_config(GOOD, REPO / "r.toml", {"KAFKA_BOOTSTRAP": "k1:9092,k2:9092"})
    assert config.kafka.bootstrap == "k1:9092,k2:9092" and not config.kafka.embedded


def test_unknown_field_names_line() -> None:
    text = GOOD.replace(
        'topic = "stadium/{match}/score"', 'topic = "stadium/{match}/score"\nqos = 3'
    )
    assert problems(text) == [
        "r.toml:12: routes[0].mqtt.qos: unknown field; did you mean 'max_qos'?"
    ]


def test_bad_template_names_line_and_field() -> None:
    text = GOOD.replace("/matches/{match}/scores", "/matches/+/scores")
    (problem,) = problems(text)
    assert problem.startswith("r.toml:14: routes[0].sse.path:")
    assert "not + or #" in problem


def test_parameter_not_recoverable_from_record() -> None:
    text = GOOD.replace('key = "{match}"', 'key = "all"')
    found = problems(text)
    assert any("r.toml:11: routes[0].mqtt.topic" in p and "cannot be read back" in p for p in found)


def test_every_problem_reported_at_once() -> None:
    text = GOOD.replace('name = "any"', 'name = "scores"').replace("[kafka]", "[kafka]\nacks = 2")
    found = problems(text)
    assert any(p.startswith("r.toml:3: kafka.acks:") for p in found)


def test_duplicate_route_name_after_schema_passes() -> None:
    found = problems(GOOD.replace('name = "any"', 'name = "scores"'))
    assert found == ["r.toml:17: routes[1].name: route name 'scores' is used twice"]


def test_toml_syntax_error_has_line() -> None:
    (problem,) = problems(GOOD.replace('topic = "scores"', 'topic = "scores'))
    assert problem.startswith("r.toml:7: TOML syntax:")


def test_missing_schema_file() -> None:
    text = GOOD.replace('key = "{match}"', 'key = "{match}"\nschema = "schemas/nope.json"')
    (problem,) = problems(text)
    assert problem.startswith("r.toml:9: routes[0].schema: cannot read")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.process.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_shipped_routing_toml() -> None:
    result = run_cli("check", "--config", "routing.toml")
    assert result.returncode == 0, result.stderr
    assert "place-bet" in result.stdout and "stadium/{match}/score" in result.stdout


def test_check_broken_file_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "routing.toml"
    broken.write_text(GOOD.replace('topic = "{topic...}"', 'topic = "{topic...}/x"'))
    result = run_cli("check", "--config", str(broken))
    assert result.returncode == 2
    assert (
        f"{broken}:22: routes[1].mqtt.topic: {{topic...}} must be the last level" in result.stderr
    )


def test_help_explains() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and "KAFKA_BOOTSTRAP" in result.stdout
    assert "run" in result.stdout and "check" in result.stdout


FIVE_MISTAKES = """[listeners.mqtt]
port = "1883"

[[routes]]
name = "scores"
topic = "scores"
key = "{mtch}"
schema = "schemas/missing.json"
[routes.mqtt]
topic = "stadium/{match}/score"

[[routes]]
name = "scores"
topik = "other"
topic = "other"
"""


def test_check_reports_every_problem_at_its_line_in_file_order(tmp_path: Path) -> None:
    """Five mistakes (a wrong type under [listeners.*], a key naming no parameter, a missing
    schema file, a duplicate route name, an unknown field): all of them at once, each at the line
    of the value at fault, sorted by line, nothing false (no "unknown field" on a section header),
    and a "did you mean" where a name is close."""
    path = tmp_path / "routing.toml"
    path.write_text(FIVE_MISTAKES)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    lines = [line.strip() for line in result.stderr.splitlines()[1:]]
    where = [line.split(": ")[0].rsplit(":", 1)[1] + " " + line.split(": ")[1] for line in lines]
    assert where == [
        "2 listeners.mqtt.port",
        "7 routes[0].key",
        "8 routes[0].schema",
        "10 routes[0].mqtt.topic",  # {match} cannot be read back, given the key's typo
        "13 routes[1].name",
        "14 routes[1].topik",
    ], lines
    assert "did you mean 'match'?" in lines[1]
    assert "cannot read" in lines[2]
    assert "used twice" in lines[4]
    assert lines[5].endswith("unknown field; did you mean 'topic'?")
    assert not [line for line in lines if line.split(": ")[1].endswith(".")]
