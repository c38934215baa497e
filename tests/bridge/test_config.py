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


# The installed console script, as an operator runs it (the venv's bin/, beside its python).
EDGEBRIDGE = Path(sys.executable).with_name("edgebridge")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EDGEBRIDGE), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_lines(tmp_path: Path, text: str, command: str = "check") -> list[str]:
    """``edgebridge <command> --config routing.toml`` on ``text``: its problem lines, with the
    temporary directory written as DIR; the command must exit 2."""
    path = tmp_path / "routing.toml"
    path.write_text(text)
    result = run_cli(command, "--config", str(path))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    first, *rest = result.stderr.splitlines()
    assert first == f"{path} is not valid:", result.stderr
    return [line.strip().replace(str(tmp_path), "DIR") for line in rest]


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
    lines = [line.strip().replace(str(tmp_path), "DIR") for line in result.stderr.splitlines()]
    # Nothing else: not "{match} cannot be read back" at the address, which only follows from
    # the key's typo and goes when it is fixed; nor "unknown field" on a section header.
    assert lines == [
        "DIR/routing.toml is not valid:",
        "DIR/routing.toml:2: listeners.mqtt.port: '1883' is not of type 'integer'",
        "DIR/routing.toml:7: routes[0].key: {mtch} is not a parameter of mqtt/topic "
        "'stadium/{match}/score'; did you mean 'match'?",
        "DIR/routing.toml:8: routes[0].schema: cannot read DIR/schemas/missing.json: "
        "No such file or directory",
        "DIR/routing.toml:13: routes[1].name: route name 'scores' is used twice",
        "DIR/routing.toml:14: routes[1].topik: unknown field; did you mean 'topic'?",
    ]


def test_check_reports_a_wrong_type_and_every_problem_after_it(tmp_path: Path) -> None:
    """A value of the wrong type (key = 5) used to end the checks that need built settings:
    the later routes' duplicate name and missing schema file went unreported."""
    lines = check_lines(
        tmp_path,
        """[[routes]]
name = "scores"
topic = "scores"
key = 5
headers = { venue = "{matc}", n = 3 }
[routes.mqtt]
topic = "stadium/{match}/score"

[[routes]]
name = "scores"
topic = "x"
schema = "nope.json"
""",
    )
    assert lines == [
        "DIR/routing.toml:4: routes[0].key: 5 is not of type 'string'",
        "DIR/routing.toml:5: routes[0].headers.n: 3 is not of type 'string'",
        "DIR/routing.toml:5: routes[0].headers.venue: {matc} is not a parameter of mqtt/topic "
        "'stadium/{match}/score'; did you mean 'match'?",
        "DIR/routing.toml:10: routes[1].name: route name 'scores' is used twice",
        "DIR/routing.toml:12: routes[1].schema: cannot read DIR/nope.json: "
        "No such file or directory",
    ]


def test_check_reports_every_kind_of_bad_schema_file(tmp_path: Path) -> None:
    """Missing, a directory, not UTF-8 (used to crash with a traceback), not JSON, not a JSON
    Schema: each at its route's schema line."""
    (tmp_path / "latin1.json").write_bytes(b'{"title": "caf\xe9"}')
    (tmp_path / "broken.json").write_text('{"type": ')
    (tmp_path / "wrong.json").write_text('{"type": "object", "properties": {"a": {"type": 5}}}')
    (tmp_path / "folder.json").mkdir()
    routes = "".join(
        f'[[routes]]\nname = "r{i}"\ntopic = "t{i}"\nschema = "{schema}"\n'
        for i, schema in enumerate(
            ["missing.json", "folder.json", "latin1.json", "broken.json", "wrong.json"]
        )
    )
    assert check_lines(tmp_path, routes) == [
        "DIR/routing.toml:4: routes[0].schema: cannot read DIR/missing.json: "
        "No such file or directory",
        "DIR/routing.toml:8: routes[1].schema: cannot read DIR/folder.json: Is a directory",
        "DIR/routing.toml:12: routes[2].schema: DIR/latin1.json is not UTF-8 text: byte 14",
        "DIR/routing.toml:16: routes[3].schema: DIR/broken.json is not JSON: "
        "Expecting value: line 1 column 10 (char 9)",
        "DIR/routing.toml:20: routes[4].schema: DIR/wrong.json is not a valid JSON Schema: "
        "at /properties/a/type: 5 is not valid under any of the given schemas",
    ]


def test_check_points_at_the_array_element_and_the_entry_at_fault(tmp_path: Path) -> None:
    """A bad element of a multi-line array at its own line (was: its table's header); a bad
    [[routes.http]] entry at its field (was: 'routes[0].http: [...] is not of type object' at
    line 1); a path whose parameter is misspelt at the path, naming the likely typo."""
    lines = check_lines(
        tmp_path,
        """[[routes]]
name = "bets"
topic = "bets"
key = "{id}"
[[routes.http]]
method = "POST"
path = "/bets/{id}"
[[routes.http]]
method = "GETT"
path = "/bets/{idd}/status"
[routes.access]
publish = [
  "bettor",
  "",
]
""",
    )
    assert lines == [
        "DIR/routing.toml:9: routes[0].http[1].method: 'GETT' is not one of "
        '"GET", "POST", "PUT", "PATCH", "DELETE"',
        "DIR/routing.toml:10: routes[0].http[1].path: '/bets/{idd}/status' has no {id}, "
        "which the key uses; is {idd} meant to be {id}?",
        "DIR/routing.toml:14: routes[0].access.publish[1]: '' should be non-empty",
    ]


def test_check_refuses_access_rules_that_would_check_nobody(tmp_path: Path) -> None:
    """identity naming no address parameter let everyone through; 'Anonymous' or
    'authenticted' would be role names no token carries."""
    lines = check_lines(
        tmp_path,
        """[[routes]]
name = "user-bets"
topic = "user-bets"
key = "{user}"
sse = { path = "/users/{user}/bets" }
access = { subscribe = ["Anonymous", "bettor", "authenticted"], identity = "usr" }
""",
    )
    assert lines == [
        "DIR/routing.toml:6: routes[0].access.identity: 'usr' is not a parameter of this "
        "route's addresses ('/users/{user}/bets'): nobody's identity would be checked; "
        "did you mean 'user'?",
        "DIR/routing.toml:6: routes[0].access.subscribe[0]: 'Anonymous' would be a role name "
        "tokens carry; did you mean 'anonymous'?",
        "DIR/routing.toml:6: routes[0].access.subscribe[2]: 'authenticted' would be a role "
        "name tokens carry; did you mean 'authenticated'?",
    ]


def test_check_names_a_single_http_table_as_written(tmp_path: Path) -> None:
    """[routes.http] (one table): its path problem at the path line, named routes[0].http.path
    (was: routes[0].http[0] at the route's header)."""
    lines = check_lines(
        tmp_path,
        """[[routes]]
name = "a"
topic = "a"
[routes.http]
method = "POST"
path = "no-slash"
""",
    )
    assert lines == ["DIR/routing.toml:6: routes[0].http.path: an HTTP path must start with '/'"]


def test_run_refuses_to_start_with_the_same_problems(tmp_path: Path) -> None:
    """`edgebridge run` reports exactly what `check` does and exits 2 before opening anything."""
    assert check_lines(tmp_path, FIVE_MISTAKES, "run") == check_lines(tmp_path, FIVE_MISTAKES)


def test_check_help_teaches_with_examples() -> None:
    result = run_cli("check", "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and "edgebridge check -c deploy/routing.toml" in (
        result.stdout
    )
    assert "did you mean 'topic'?" in result.stdout and "exit status" in result.stdout.lower()


def test_after_reset_is_earliest_or_live_and_a_wrong_value_names_its_line() -> None:
    assert parse_config(GOOD, Path("r.toml")).routes[0].after_reset == "earliest"
    live = GOOD.replace('key = "{match}"', 'key = "{match}"\nafter_reset = "live"')
    assert parse_config(live, Path("r.toml")).routes[0].after_reset == "live"
    wrong = GOOD.replace('key = "{match}"', 'key = "{match}"\nafter_reset = "latest"')
    assert problems(wrong) == [
        'r.toml:9: routes[0].after_reset: \'latest\' is not one of "earliest", "live"'
    ]


def test_the_removed_sse_listener_is_refused_at_its_line_with_what_to_change(
    tmp_path: Path,
) -> None:
    """[listeners.sse] (the separate lean SSE port) is gone: `edgebridge check` and start-up
    (the same parse) name its line and say where streams are served now."""
    text = GOOD + '\n[listeners.sse]\nport = 8081\ncors_origins = ["https://bets.example"]\n'
    line = text.splitlines().index("[listeners.sse]") + 1
    (problem,) = check_lines(tmp_path, text)
    assert problem.startswith(f"DIR/routing.toml:{line}: listeners.sse: ")
    assert "[listeners.http]" in problem and "delete this section" in problem


def test_check_points_at_the_line_of_a_bad_transform_expression(tmp_path: Path) -> None:
    """A CEL syntax error at its own line inside a multi-line expression; a variable no
    expression can read at the line that names it; a source schema without an inbound transform;
    an outbound pointer that is not a JSON pointer."""
    (tmp_path / "src.json").write_text('{"type": "object"}')
    lines = check_lines(
        tmp_path,
        """[[routes]]
name = "odds"
topic = "odds"
key = "{match}"
[routes.mqtt]
topic = "odds/{match}"
[routes.transform]
inbound = '''
{
  "match": params.match,
  "home": 100.0 / body.home_pct +,
}
'''
[[routes]]
name = "odds2"
topic = "odds"
key = "{match}"
[routes.mqtt]
topic = "odds2/{match}"
[routes.transform]
source_schema = "src.json"
[[routes.transform.outbound]]
roles = ["anonymous"]
expression = '''
{"home": body.home,
 "who": user.name}'''
remove = ["home"]
""",
    )
    assert lines == [
        "DIR/routing.toml:11: routes[0].transform.inbound: column 34: Syntax error: "
        "mismatched input ','",
        "DIR/routing.toml:21: routes[1].transform.source_schema: a source schema checks what "
        "an inbound transform reads: give inbound too",
        "DIR/routing.toml:26: routes[1].transform.outbound[0].expression: unknown variable "
        "'user': an expression reads body, key, headers, params, identity, claims, roles, region",
        "DIR/routing.toml:27: routes[1].transform.outbound[0].remove[0]: 'home' is not a JSON "
        "pointer to a field (like /user/name)",
    ]


def test_check_refuses_a_route_republishing_its_own_topic_or_keyed_by_an_address(
    tmp_path: Path,
) -> None:
    lines = check_lines(
        tmp_path,
        """[[routes]]
name = "feed"
topic = "odds"
key = "{match}"
[routes.kafka]
source = "odds"
""",
    )
    assert lines == [
        "DIR/routing.toml:4: routes[0].key: '{match}' names {match}, but a route that only "
        "republishes Kafka records has no address: use {$key} or {$body.field}",
        "DIR/routing.toml:6: routes[0].kafka.source: a route cannot republish its own topic "
        "'odds' (every record would come back for ever)",
    ]
