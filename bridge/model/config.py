"""routing.toml: load, validate against the JSON schema, and turn into typed settings.

Every problem is reported at once, each with file, line and the field path, e.g.::

    routing.toml:31: routes[2].mqtt.topic: level 'a+b': use {name} / {name...}, not + or #
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from bridge.model.address import AddressTemplate, TemplateError
from bridge.model.audit_settings import DEFAULT as DEFAULT_AUDIT
from bridge.model.audit_settings import AuditSettings, audit_settings
from bridge.model.guard_settings import GuardConfigError, GuardSettings, load_guard_settings
from bridge.model.toml_lines import TomlLines
from bridge.model.value_template import ValueTemplate, ValueTemplateError

EMBEDDED = "embedded"


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


# -- typed settings ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int = 1
    replication_factor: int = 1
    compact: bool = False
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: str = EMBEDDED
    client_id: str = "edgebridge"
    acks: str = "all"
    fetch_max_wait_ms: int = 20
    # Bytes per produce batch (aiokafka's max_batch_size). aiokafka's 16 KiB default holds ~80
    # MQTT-shaped records: a busy partition then needs one round trip per 80 records, and the
    # broker spends its CPU on request overhead (measured: ~1.7x ingest at 512 KiB, broker CPU
    # per record 23 -> 3 us). Must stay below the broker's message.max.bytes (1 MiB default).
    producer_batch_bytes: int = 512 * 1024
    cache_records: int = 10_000
    request_timeout_ms: int = 10_000
    security: Mapping[str, str] = field(default_factory=dict)
    topics: Mapping[str, TopicSpec] = field(default_factory=dict)

    @property
    def embedded(self) -> bool:
        return self.bootstrap == EMBEDDED


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    host: str
    port: int
    enabled: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Access:
    publish: tuple[str, ...] | None = None  # None: not restricted by this route
    subscribe: tuple[str, ...] | None = None
    identity: str | None = None


@dataclass(frozen=True, slots=True)
class ProtocolBinding:
    """How one protocol reaches a route: its address template plus protocol options."""

    template: AddressTemplate
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    topic: str
    key: ValueTemplate | None
    headers: Mapping[str, ValueTemplate]
    acks: str
    schema_path: Path | None
    schema: Mapping[str, Any] | None
    content_type: str | None
    access: Access
    mqtt: ProtocolBinding | None
    sse: ProtocolBinding | None
    http: tuple[ProtocolBinding, ...]
    index: int  # position in routing.toml, for stable ordering
    dead_letter: str | None = None  # topic for payloads this route rejects
    audit: AuditSettings = DEFAULT_AUDIT

    def params_from_record(
        self, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> dict[str, str] | None:
        """Address parameters carried by a Kafka record of this route, or None if it is not one."""
        params: dict[str, str] = {}
        if self.key is not None and self.key.parameters:
            if key is None:
                return None
            try:
                parsed = self.key.parse(key.decode())
            except UnicodeDecodeError:
                return None
            if parsed is None:
                return None
            params.update(parsed)
        for name, template in self.headers.items():
            if not template.parameters:
                continue
            raw = next((value for header, value in headers if header == name), None)
            if raw is None:
                return None
            try:
                parsed = template.parse(raw.decode())
            except UnicodeDecodeError:
                return None
            if parsed is None:
                return None
            for param, value in parsed.items():
                if params.setdefault(param, value) != value:
                    return None
        return params


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    bridge_name: str
    log_format: str
    log_level: str
    kafka: KafkaSettings
    mqtt_listener: ListenerSettings | None
    http_listener: ListenerSettings | None
    guard: Mapping[str, Any]
    routes: tuple[Route, ...]
    raw: Mapping[str, Any]
    admin_listener: ListenerSettings | None = None
    sse_listener: ListenerSettings | None = None  # the lean SSE listener, only when configured
    guard_settings: GuardSettings | None = None  # the loaded [guard]: keys and claims policy
    audit: AuditSettings = DEFAULT_AUDIT


# -- loading -----------------------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    text = resources.files("bridge.model").joinpath("config.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate routing.toml; raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(file), None, "", f"cannot read: {exc.strerror}")]
        ) from exc
    return parse_config(text, file, environ)


def parse_config(text: str, file: Path, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    name = str(file)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_syntax_problem(name, exc)]) from exc
    lines = TomlLines(text)
    checker = _Checker(name, lines)
    validator = jsonschema.Draft202012Validator(load_schema())
    for error in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        if error.validator in ("additionalProperties", "unevaluatedProperties"):
            # Point at the unknown key's own line, one problem per key. (An unevaluated-
            # properties error with no unknown key is the echo of another error in the same
            # table, reported on its own: not a problem of its own.)
            known = _known_keys(error)
            for extra in _unknown_keys(error):
                checker.add([*path, extra], "unknown field" + _did_you_mean(extra, known))
            continue
        checker.add(path, _schema_message(error))
    schema_problems = bool(checker.problems)
    try:
        # Every problem at once: the checks that need built settings (schema files,
        # templates, duplicate routes) run even when the schema already found some.
        config = _build(raw, file, checker, environ)
    except Exception:
        if not schema_problems:
            raise
        raise ConfigError(_by_line(checker.problems)) from None
    if checker.problems:
        raise ConfigError(_by_line(checker.problems))
    return config


def _by_line(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    """In file order: a person fixes a file from the top."""
    return sorted(problems, key=lambda p: (p.line if p.line is not None else 0, p.path))


def _toml_syntax_problem(name: str, exc: tomllib.TOMLDecodeError) -> ConfigProblem:
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


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        return f"{error.instance!r} is not one of {allowed}"
    if error.validator == "oneOf" and error.context:
        best = min(error.context, key=lambda e: len(list(e.absolute_path)))
        return best.message
    return error.message


@dataclass
class _Checker:
    file: str
    lines: TomlLines
    problems: list[ConfigProblem] = field(default_factory=list)

    def add(self, path: Sequence[str | int], message: str) -> None:
        dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        self.problems.append(ConfigProblem(self.file, self.lines.line_of(path), dotted, message))


def _build(
    raw: Mapping[str, Any], file: Path, checker: _Checker, environ: Mapping[str, str]
) -> Config:
    bridge = raw.get("bridge", {})
    kafka = _build_kafka(raw.get("kafka", {}), environ)
    audit = audit_settings(raw.get("audit"))
    listeners = raw.get("listeners", {})
    routes = tuple(
        route
        for index, entry in enumerate(raw["routes"])
        if (route := _build_route(entry, index, file, checker, audit)) is not None
    )
    _check_routes(routes, checker)
    return Config(
        path=file,
        bridge_name=bridge.get("name", "edgebridge"),
        log_format=bridge.get("log_format", "auto"),
        log_level=bridge.get("log_level", "info"),
        kafka=kafka,
        mqtt_listener=_build_listener(listeners.get("mqtt"), 1883),
        http_listener=_build_listener(listeners.get("http"), 8080),
        guard=raw.get("guard", {}),
        routes=routes,
        raw=raw,
        # Only when asked for: many bridges (tests, workers of other instances) share a host.
        admin_listener=_build_listener(listeners["admin"], 9090) if "admin" in listeners else None,
        sse_listener=_build_listener(listeners["sse"], 8081) if "sse" in listeners else None,
        guard_settings=_build_guard(raw.get("guard", {}), file, checker, environ),
        audit=audit,
    )


def _build_kafka(raw: Mapping[str, Any], environ: Mapping[str, str]) -> KafkaSettings:
    bootstrap = environ.get("KAFKA_BOOTSTRAP") or raw.get("bootstrap", EMBEDDED)
    topics = {
        name: TopicSpec(
            name=name,
            partitions=spec.get("partitions", 1),
            replication_factor=spec.get("replication_factor", 1),
            compact=spec.get("compact", False),
            config=dict(spec.get("config", {})),
        )
        for name, spec in raw.get("topics", {}).items()
    }
    security = {
        k: str(raw[k])
        for k in ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password")
        if k in raw
    }
    return KafkaSettings(
        bootstrap=bootstrap,
        client_id=raw.get("client_id", "edgebridge"),
        acks=_acks(raw.get("acks", "all")),
        fetch_max_wait_ms=raw.get("fetch_max_wait_ms", 20),
        producer_batch_bytes=raw.get("producer_batch_bytes", 512 * 1024),
        cache_records=raw.get("cache_records", 10_000),
        request_timeout_ms=raw.get("request_timeout_ms", 10_000),
        security=security,
        topics=topics,
    )


def _acks(value: Any) -> str:
    return (
        {0: "0", 1: "1", -1: "all"}.get(value, str(value)) if not isinstance(value, str) else value
    )


def _build_listener(raw: Mapping[str, Any] | None, default_port: int) -> ListenerSettings | None:
    raw = raw or {}
    if raw.get("enabled") is False:
        return None
    options = {k: v for k, v in raw.items() if k not in ("host", "port", "enabled")}
    return ListenerSettings(
        raw.get("host", "127.0.0.1"), raw.get("port", default_port), True, options
    )


def _build_guard(
    raw: Mapping[str, Any], file: Path, checker: _Checker, environ: Mapping[str, str]
) -> GuardSettings | None:
    try:
        return load_guard_settings(raw, file.parent, environ)
    except GuardConfigError as exc:
        checker.add(("guard", exc.field), str(exc))
        return None


def _build_route(
    raw: Mapping[str, Any],
    index: int,
    file: Path,
    checker: _Checker,
    audit: AuditSettings = DEFAULT_AUDIT,
) -> Route | None:
    at: tuple[str | int, ...] = ("routes", index)
    before = len(checker.problems)

    def template(value: str, *where: str | int) -> AddressTemplate | None:
        try:
            return AddressTemplate.compile(value)
        except TemplateError as exc:
            checker.add((*at, *where), str(exc))
            return None

    def value_template(value: str, *where: str | int) -> ValueTemplate | None:
        try:
            return ValueTemplate.compile(value)
        except ValueTemplateError as exc:
            checker.add((*at, *where), str(exc))
            return None

    key = value_template(raw["key"], "key") if "key" in raw else None
    headers = {
        name: compiled
        for name, value in raw.get("headers", {}).items()
        if (compiled := value_template(value, "headers", name)) is not None
    }
    mqtt = _binding(raw.get("mqtt"), "topic", template, ("mqtt", "topic"))
    sse = _binding(raw.get("sse"), "path", template, ("sse", "path"))
    http_raw = raw.get("http", [])
    http_list = [http_raw] if isinstance(http_raw, dict) else list(http_raw)
    http = tuple(
        binding
        for i, entry in enumerate(http_list)
        if (
            binding := _binding(
                entry,
                "path",
                template,
                ("http", i, "path") if isinstance(http_raw, list) else ("http", "path"),
            )
        )
        is not None
    )
    for binding, where in ((mqtt, "mqtt"), (sse, "sse")):
        if binding and binding.template.source.startswith("/") != (where == "sse"):
            if where == "sse":
                checker.add((*at, where, "path"), "an SSE path must start with '/'")
    for i, binding in enumerate(http):
        if not binding.template.source.startswith("/"):
            checker.add((*at, "http", i), "an HTTP path must start with '/'")
    if len(checker.problems) > before:
        return None  # templates that do not compile: nothing more can be checked here
    # A schema file that cannot be read is reported, and the route's other checks (parameters,
    # duplicate names) still run: the config fails as a whole anyway, with every problem.
    schema_path, schema = _load_route_schema(raw.get("schema"), file, checker, at)
    access_raw = raw.get("access", {})
    access = Access(
        publish=tuple(access_raw["publish"]) if "publish" in access_raw else None,
        subscribe=tuple(access_raw["subscribe"]) if "subscribe" in access_raw else None,
        identity=access_raw.get("identity"),
    )
    route = Route(
        name=raw["name"],
        topic=raw["topic"],
        key=key,
        headers=headers,
        acks=_acks(raw["acks"]) if "acks" in raw else "",
        schema_path=schema_path,
        schema=schema,
        content_type=raw.get("content_type"),
        access=access,
        mqtt=mqtt,
        sse=sse,
        http=http,
        index=index,
        dead_letter=raw.get("dead_letter"),
        audit=audit_settings(raw.get("audit"), audit),
    )
    _check_parameters(route, at, checker)
    return route


def _binding(
    raw: Mapping[str, Any] | None,
    field_name: str,
    compile_template: Any,
    where: tuple[str | int, ...],
) -> ProtocolBinding | None:
    if raw is None:
        return None
    compiled = compile_template(raw[field_name], *where)
    if compiled is None:
        return None
    options = {k: v for k, v in raw.items() if k != field_name}
    return ProtocolBinding(compiled, options)


def _load_route_schema(
    value: str | None, file: Path, checker: _Checker, at: tuple[str | int, ...]
) -> tuple[Path | None, Mapping[str, Any] | None]:
    if value is None:
        return None, None
    path = (file.parent / value).resolve()
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        checker.add((*at, "schema"), f"cannot read {path}: {exc.strerror}")
        return None, None
    except json.JSONDecodeError as exc:
        checker.add((*at, "schema"), f"{path} is not JSON: {exc}")
        return None, None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        checker.add((*at, "schema"), f"{path} is not a valid JSON Schema: {exc.message}")
        return None, None
    return path, schema


def _check_parameters(route: Route, at: tuple[str | int, ...], checker: _Checker) -> None:
    """Every address parameter must be used, and recoverable from the record when read back."""
    recoverable: set[str] = set(route.key.parameters if route.key else ())
    for template in route.headers.values():
        recoverable.update(template.parameters)
    # (where, binding, writes through it, reads through it)
    bindings: list[tuple[tuple[str | int, ...], ProtocolBinding, bool, bool]] = []
    if route.mqtt:
        bindings.append((("mqtt", "topic"), route.mqtt, True, True))
    if route.sse:
        bindings.append((("sse", "path"), route.sse, False, True))
    for i, binding in enumerate(route.http):
        is_get = binding.options.get("method") == "GET"
        bindings.append((("http", i, "path"), binding, not is_get, is_get))
    used = _used_parameters(route)
    for where, binding, writes, reads in bindings:
        params = set(binding.template.parameters)
        if writes:
            for missing in sorted(used - params):
                # Reported where the unknown name is written (the key or the header), not at
                # the address: that is the line to fix, usually a typo.
                checker.add(
                    (*at, *_where_used(route, missing)),
                    f"{{{missing}}} is not a parameter of {'/'.join(map(str, where))} "
                    f"{binding.template.source!r}{_did_you_mean(missing, params)}",
                )
        if reads:
            for missing in sorted(params - recoverable):
                checker.add(
                    (*at, *where),
                    f"parameter {{{missing}}} cannot be read back from a Kafka record: "
                    "use it in `key` or in a header",
                )


def _where_used(route: Route, name: str) -> tuple[str, ...]:
    """The field of ``route`` whose template uses parameter ``name``: its key or a header."""
    if route.key is not None and name in route.key.parameters:
        return ("key",)
    for header, template in route.headers.items():
        if name in template.parameters:
            return ("headers", header)
    return ("key",)


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _used_parameters(route: Route) -> set[str]:
    used: set[str] = set(route.key.parameters if route.key else ())
    for template in route.headers.values():
        used.update(template.parameters)
    return used


def _check_routes(routes: Sequence[Route], checker: _Checker) -> None:
    seen: dict[str, int] = {}
    for route in routes:
        if route.name in seen:
            checker.add(("routes", route.index, "name"), f"route name {route.name!r} is used twice")
        seen[route.name] = route.index
    for kind in ("mqtt", "sse"):
        templates: dict[str, int] = {}
        for route in routes:
            binding = getattr(route, kind)
            if binding is None:
                continue
            shape = _shape(binding.template)
            if shape in templates:
                checker.add(
                    ("routes", route.index, kind),
                    f"same {kind} address as routes[{templates[shape]}]: one of them can never match",
                )
            templates[shape] = route.index
    http_seen: dict[tuple[str, str], int] = {}
    for route in routes:
        for i, binding in enumerate(route.http):
            shape_key = (str(binding.options.get("method")), _shape(binding.template))
            if shape_key in http_seen:
                checker.add(
                    ("routes", route.index, "http", i),
                    f"same method and path as routes[{http_seen[shape_key]}]",
                )
            http_seen[shape_key] = route.index


def _shape(template: AddressTemplate) -> str:
    marks = {"param": "+", "rest": "#"}
    return "/".join(marks.get(level.kind, level.text) for level in template.levels)
