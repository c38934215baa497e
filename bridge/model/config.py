"""routing.toml: load, validate against the JSON schema, and turn into typed settings.

Every problem is reported at once, each with file, line and the field path, e.g.::

    routing.toml:31: routes[2].mqtt.topic: level 'a+b': use {name} / {name...}, not + or #
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from bridge.model.address import AddressTemplate, TemplateError
from bridge.model.audit_settings import DEFAULT as DEFAULT_AUDIT
from bridge.model.audit_settings import AuditSettings, audit_settings
from bridge.model.config_problems import (
    Checker,
    ConfigError,
    ConfigProblem,
    by_line,
    did_you_mean,
    load_schema,
    schema_problems,
    toml_syntax_problem,
    without_invalid,
)
from bridge.model.guard_settings import GuardConfigError, GuardSettings, load_guard_settings
from bridge.model.jurisdiction import Jurisdiction
from bridge.model.kafka_security import PLAINTEXT, KafkaSecurity, load_kafka_security
from bridge.model.proto_bindings import MethodBinding, ProtoBindingError, bind_method
from bridge.model.record_filter import NO_FILTERS, FilterParam, FilterSpec, check_param
from bridge.model.transforms import (
    Expression,
    ExpressionError,
    Projection,
    Transform,
    pointer_tokens,
)
from bridge.model.value_template import ValueTemplate, ValueTemplateError

EMBEDDED = "embedded"
# [listeners.sse] (the separate lean SSE port) is gone: refused with what to change (issue 14).
REMOVED_SSE_LISTENER = (
    "the separate SSE listener was removed: event streams are served on [listeners.http] (same "
    "paths, now with TLS and keep-alive, at least as lean); delete this section, point clients "
    "at the HTTP listener's port and move its cors_origins and region to [listeners.http] "
    "(docs/sse.md)"
)


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
    security: KafkaSecurity = field(default_factory=KafkaSecurity)  # TLS and SASL
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


# Roles with a meaning of their own in [routes.access] lists; any other entry is a token's role.
ANONYMOUS_ROLE = "anonymous"  # anyone, with or without a token
AUTHENTICATED_ROLE = "authenticated"  # anyone with a verified token


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


# -- catalog (issue 16 item 4): what a route is as a data product --------------------------


@dataclass(frozen=True, slots=True)
class ProductInfo:
    """A route's catalog entry as written in routing.toml (``description``, ``owner``, ``tags``,
    ``version``); the rest of a product (addresses, tools, methods, health) is derived."""

    description: str = ""
    owner: str | None = None
    tags: tuple[str, ...] = ()
    version: str | None = None


NO_PRODUCT_INFO = ProductInfo()


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
    # After a reset (topic recreated, broker replaced, another epoch on resume) or a truncation:
    # "earliest" (what is available from its start) or "live" (only what comes after it).
    after_reset: str = "earliest"
    audit: AuditSettings = DEFAULT_AUDIT
    # -- governance (issue 16 items 3 and 6): subscriber filters and jurisdiction --
    filters: FilterSpec = NO_FILTERS
    jurisdiction: Jurisdiction | None = None
    # [routes.grpc]: the route is reached by name through edgebridge.v1.Bridge (no address
    # template: the caller names the parameters); None: not over gRPC.
    grpc: Mapping[str, Any] | None = None
    # [routes.grpc] proto + produce: a unary method of the user's own service bound to the route.
    grpc_produce: MethodBinding | None = None
    # -- catalog (issue 16 item 4) --
    product: ProductInfo = NO_PRODUCT_INFO
    # -- transformations (issue 16 items 1 and 2): [routes.transform] --
    transform: Transform | None = None
    # [routes.kafka]: the route republishes another topic's records (source, group, start).
    kafka: Mapping[str, Any] | None = None

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
    grpc_listener: ListenerSettings | None = None  # the gRPC listener, only when configured
    guard_settings: GuardSettings | None = None  # the loaded [guard]: keys and claims policy
    audit: AuditSettings = DEFAULT_AUDIT
    # -- jurisdiction (issue 16 item 6) --
    region: str | None = None  # [bridge] region: where this instance is
    region_claim: str | None = None  # [guard] region_claim: the token claim naming the caller's


# -- loading -----------------------------------------------------------------------------------


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
        raise ConfigError([toml_syntax_problem(name, exc)]) from exc
    checker = Checker(name, text)
    validator = jsonschema.Draft202012Validator(load_schema())
    for error in validator.iter_errors(raw):
        for path, message, _keyword in schema_problems(error):
            checker.add(path, message)
    schema_refused = bool(checker.problems)
    try:
        # Every problem at once: the checks that need built settings (schema files, templates,
        # parameters, duplicate routes, access) run even when the schema already found some,
        # on the document with the values the schema refused taken out.
        valid = without_invalid(raw, validator, checker) if schema_refused else raw
        config = _build(valid, file, checker, environ)
    except Exception:
        if not schema_refused:
            raise
        raise ConfigError(by_line(checker.problems)) from None
    if checker.problems:
        raise ConfigError(by_line(checker.problems))
    return config


def _build(
    raw: Mapping[str, Any], file: Path, checker: Checker, environ: Mapping[str, str]
) -> Config:
    bridge = raw.get("bridge", {})
    kafka = _build_kafka(raw.get("kafka", {}), file, checker, environ)
    audit = audit_settings(raw.get("audit"))
    listeners = raw.get("listeners", {})
    routes = tuple(
        route
        for index, entry in enumerate(raw.get("routes", []))
        if entry is not None  # refused by the schema as a whole (reported there)
        and (route := _build_route(entry, index, file, checker, audit)) is not None
    )
    _check_routes(routes, checker)
    _check_regions(routes, bridge, raw.get("guard", {}), listeners, checker)
    if "sse" in listeners:
        checker.add(("listeners", "sse"), REMOVED_SSE_LISTENER)
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
        grpc_listener=_build_listener(listeners["grpc"], 50051) if "grpc" in listeners else None,
        guard_settings=_build_guard(raw.get("guard", {}), file, checker, environ),
        audit=audit,
        region=str(bridge["region"]).lower() if "region" in bridge else None,
        region_claim=raw.get("guard", {}).get("region_claim"),
    )


def _build_kafka(
    raw: Mapping[str, Any], file: Path, checker: Checker, environ: Mapping[str, str]
) -> KafkaSettings:
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
    security = load_kafka_security(
        raw, file.parent, environ, lambda key, message: checker.add(("kafka", key), message)
    )
    if bootstrap == EMBEDDED and security.protocol != PLAINTEXT:
        # The embedded Tansu serves neither TLS nor usable SASL (docs/tansu-behaviour.md).
        checker.add(
            ("kafka", "security_protocol"),
            f"{security.protocol} needs a Kafka of your own: the embedded broker speaks "
            "PLAINTEXT only (set [kafka] bootstrap or KAFKA_BOOTSTRAP)",
        )
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
    raw: Mapping[str, Any], file: Path, checker: Checker, environ: Mapping[str, str]
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
    checker: Checker,
    audit: AuditSettings = DEFAULT_AUDIT,
) -> Route | None:
    at: tuple[str | int, ...] = ("routes", index)
    broken = False  # a template does not compile: the parameter checks cannot run

    def template(value: str, *where: str | int) -> AddressTemplate | None:
        nonlocal broken
        try:
            return AddressTemplate.compile(value)
        except TemplateError as exc:
            broken = True
            checker.add((*at, *where), str(exc))
            return None

    def value_template(value: str, *where: str | int) -> ValueTemplate | None:
        nonlocal broken
        try:
            return ValueTemplate.compile(value)
        except ValueTemplateError as exc:
            broken = True
            checker.add((*at, *where), str(exc))
            return None

    key = value_template(raw["key"], "key") if "key" in raw else None
    headers = {
        name: compiled
        for name, value in raw.get("headers", {}).items()
        if (compiled := value_template(value, "headers", name)) is not None
    }
    # (where in the file, binding, writes through it, reads through it)
    bindings: list[tuple[tuple[str | int, ...], ProtocolBinding, bool, bool]] = []
    mqtt = _binding(raw.get("mqtt"), "topic", template, ("mqtt", "topic"))
    if mqtt:
        bindings.append((("mqtt", "topic"), mqtt, True, True))
    sse = _binding(raw.get("sse"), "path", template, ("sse", "path"))
    if sse:
        bindings.append((("sse", "path"), sse, False, True))
        if not sse.template.source.startswith("/"):
            checker.add((*at, "sse", "path"), "an SSE path must start with '/'")
    http_raw = raw.get("http", [])
    http_list = [http_raw] if isinstance(http_raw, dict) else list(http_raw)
    http: list[ProtocolBinding] = []
    for i, entry in enumerate(http_list):
        # [routes.http] is one table, [[routes.http]] an array: name it as the file does.
        where = ("http", i, "path") if isinstance(http_raw, list) else ("http", "path")
        binding = _binding(entry, "path", template, where)
        if binding is None:
            continue
        http.append(binding)
        is_get = binding.options.get("method") == "GET"
        bindings.append((where, binding, not is_get, is_get))
        if not binding.template.source.startswith("/"):
            checker.add((*at, *where), "an HTTP path must start with '/'")
    # A schema file that cannot be read is reported, and the route's other checks still run:
    # the config fails as a whole anyway, with every problem.
    schema_path, schema = _load_route_schema(raw.get("schema"), file, checker, at)
    access_raw = raw.get("access", {})
    access = Access(
        publish=tuple(access_raw["publish"]) if "publish" in access_raw else None,
        subscribe=tuple(access_raw["subscribe"]) if "subscribe" in access_raw else None,
        identity=access_raw.get("identity"),
    )
    _check_roles(access, at, checker)
    if broken:
        return None  # parameters of templates that do not compile cannot be checked
    route = Route(
        name=raw.get("name", ""),  # a missing name or topic is reported by the schema
        topic=raw.get("topic", ""),
        key=key,
        headers=headers,
        acks=_acks(raw["acks"]) if "acks" in raw else "",
        schema_path=schema_path,
        schema=schema,
        content_type=raw.get("content_type"),
        access=access,
        mqtt=mqtt,
        sse=sse,
        http=tuple(http),
        index=index,
        dead_letter=raw.get("dead_letter"),
        after_reset=raw.get("after_reset", "earliest"),
        audit=audit_settings(raw.get("audit"), audit),
        filters=_build_filters(raw.get("filters", []), at, checker),
        jurisdiction=_build_jurisdiction(raw, at, checker),
        grpc=dict(raw["grpc"]) if isinstance(raw.get("grpc"), dict) else None,
        grpc_produce=_bind_proto(raw.get("grpc"), file, at, checker),
        product=_build_product(raw),
        transform=_build_transform(raw.get("transform"), file, at, checker),
        kafka=dict(raw["kafka"]) if isinstance(raw.get("kafka"), dict) else None,
    )
    _check_republishing(route, at, checker)
    _check_parameters(route, bindings, at, checker, refused=checker.refused(at))
    _check_identity(route, bindings, at, checker)
    return route


# -- transformations: [routes.transform] (issue 16 items 1 and 2) --------------------------


def _check_republishing(route: Route, at: tuple[str | int, ...], checker: Checker) -> None:
    """A route reading another topic has no address: its key and headers can only read the
    record (``{$key}``, ``{$body.field}``); and it cannot read its own topic (a loop)."""
    if route.kafka is None:
        return
    if route.kafka.get("source") == route.topic:
        checker.add(
            (*at, "kafka", "source"),
            f"a route cannot republish its own topic {route.topic!r} (every record would "
            "come back for ever)",
        )
    templates = [("key", route.key)] if route.key is not None else []
    templates += [("headers", t) for t in route.headers.values()]
    for where, template in templates:
        assert template is not None
        if template.parameters and not (route.mqtt or route.sse or route.http):
            checker.add(
                (*at, where),
                f"{template.source!r} names {{{template.parameters[0]}}}, but a route that "
                "only republishes Kafka records has no address: use {$key} or {$body.field}",
            )
            return


def _build_transform(
    raw: Any, file: Path, at: tuple[str | int, ...], checker: Checker
) -> Transform | None:
    """Each expression compiled once, here; a bad one is a problem at its own line."""
    if not isinstance(raw, Mapping):
        return None  # absent, or refused by the schema

    def expression(source: Any, *where: str | int) -> Expression | None:
        if not isinstance(source, str):
            return None  # refused by the schema
        try:
            return Expression.compile(source)
        except ExpressionError as exc:
            checker.add((*at, "transform", *where), str(exc), within=exc.line)
            return None

    inbound = expression(raw["inbound"], "inbound") if "inbound" in raw else None
    source_path, source_schema = _load_route_schema(
        raw.get("source_schema"), file, checker, at, ("transform", "source_schema")
    )
    if source_schema is not None and "inbound" not in raw:
        checker.add(
            (*at, "transform", "source_schema"),
            "a source schema checks what an inbound transform reads: give inbound too",
        )
    outbound: list[Projection] = []
    for i, entry in enumerate(raw.get("outbound", [])):
        if not isinstance(entry, Mapping):
            continue
        where = ("outbound", i)  # no expression, remove or mask: these roles see it whole
        pointers: dict[str, tuple[tuple[str, ...], ...]] = {}
        for name in ("remove", "mask"):
            tokens = []
            for j, pointer in enumerate(entry.get(name, [])):
                try:
                    tokens.append(pointer_tokens(pointer))
                except ValueError as exc:
                    checker.add((*at, "transform", *where, name, j), str(exc))
            pointers[name] = tuple(tokens)
        compiled = (
            expression(entry["expression"], *where, "expression") if "expression" in entry else None
        )
        outbound.append(
            Projection(
                frozenset(entry.get("roles", ())),
                compiled,
                pointers["remove"],
                pointers["mask"],
                i,
            )
        )
    return Transform(raw.get("version"), inbound, source_path, source_schema, tuple(outbound))


# -- catalog: a route's product fields (issue 16 item 4) -------------------------------------


def _build_product(raw: Mapping[str, Any]) -> ProductInfo:
    """Each field's shape is the schema's (refused at its line, and taken out before this runs)."""
    description = raw.get("description", "")
    tags = raw.get("tags", [])
    owner = raw.get("owner")
    version = raw.get("version")
    return ProductInfo(
        description=description.strip() if isinstance(description, str) else "",
        owner=owner if isinstance(owner, str) else None,
        tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        version=version if isinstance(version, str) else None,
    )


# -- governance: filters and jurisdiction (issue 16 items 3 and 6) ---------------------------

# Query parameters the front-ends read themselves: a filter may not take these names.
RESERVED_FILTER_NAMES = ("from", "lastEventId", "access_token")


def _build_filters(
    raw: Sequence[Mapping[str, Any]], at: tuple[str | int, ...], checker: Checker
) -> FilterSpec:
    params: list[FilterParam] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or "name" not in entry or "source" not in entry:
            continue  # reported by the schema
        param = FilterParam(
            name=entry["name"],
            source=entry["source"],
            operator=entry.get("operator", "eq"),
            type=entry.get("type", "string"),
        )
        problem = check_param(param)
        if param.name in RESERVED_FILTER_NAMES:
            problem = f"{param.name!r} is a reserved query parameter; choose another name"
        elif param.name in seen:
            problem = f"filter {param.name!r} is declared twice"
        if problem is not None:
            at_fault = next(
                (f for f in ("operator", "type", "source") if problem.startswith(f) and f in entry),
                "name",
            )
            checker.add((*at, "filters", i, at_fault), problem)
            continue
        seen.add(param.name)
        params.append(param)
    return FilterSpec(tuple(params))


def _check_regions(
    routes: Sequence[Route],
    bridge: Mapping[str, Any],
    guard: Mapping[str, Any],
    listeners: Mapping[str, Any],
    checker: Checker,
) -> None:
    """Jurisdiction rules with no way to know any caller's region would refuse everyone."""
    if "region" in bridge or "region_claim" in guard:
        return
    if any(isinstance(v, Mapping) and "region" in v for v in listeners.values()):
        return
    for route in routes:
        if route.jurisdiction is not None:
            checker.add(
                ("routes", route.index, "jurisdiction"),
                "no caller has a region: set [bridge] region (or a listener's region) or "
                "[guard] region_claim",
            )


def _build_jurisdiction(
    raw: Mapping[str, Any], at: tuple[str | int, ...], checker: Checker
) -> Jurisdiction | None:
    table = raw.get("jurisdiction")
    if not isinstance(table, Mapping):
        return None
    if not any(k in table for k in ("publish", "read", "local", "exceptions")):
        checker.add((*at, "jurisdiction"), "declares no rule: give publish, read or local")
        return None
    return Jurisdiction.of(str(raw.get("name", "")), table)


def _bind_proto(
    raw: Any, file: Path, at: tuple[str | int, ...], checker: Checker
) -> MethodBinding | None:
    """``[routes.grpc] proto`` + ``produce`` compiled and resolved; problems at their line."""
    if not isinstance(raw, Mapping) or "proto" not in raw or "produce" not in raw:
        return None
    proto = file.parent / str(raw["proto"])
    try:
        return bind_method(proto, str(raw["produce"]), streaming=False)
    except ProtoBindingError as exc:
        # A file that does not compile is about `proto`; a method it lacks is about `produce`.
        compiled = proto.is_file() and ":" in str(exc).split(" ", 1)[0]
        field = "proto" if not proto.is_file() or compiled else "produce"
        checker.add((*at, "grpc", field), str(exc))
        return None


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
    value: str | None,
    file: Path,
    checker: Checker,
    at: tuple[str | int, ...],
    where: tuple[str, ...] = ("schema",),
) -> tuple[Path | None, Mapping[str, Any] | None]:
    if value is None:
        return None, None
    at = (*at, *where[:-1])
    field_name = where[-1]
    path = (file.parent / value).resolve()
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        checker.add((*at, field_name), f"cannot read {path}: {exc.strerror}")
        return None, None
    except UnicodeDecodeError as exc:
        checker.add((*at, field_name), f"{path} is not UTF-8 text: byte {exc.start}")
        return None, None
    except json.JSONDecodeError as exc:
        checker.add((*at, field_name), f"{path} is not JSON: {exc}")
        return None, None
    if not isinstance(schema, dict | bool):
        checker.add((*at, field_name), f"{path} is not a JSON Schema: not an object")
        return None, None
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        pointer = "".join(f"/{p}" for p in exc.absolute_path) or "/"
        checker.add(
            (*at, field_name), f"{path} is not a valid JSON Schema: at {pointer}: {exc.message}"
        )
        return None, None
    return path, schema if isinstance(schema, dict) else {}


Binding = tuple[tuple[str | int, ...], ProtocolBinding, bool, bool]


def _check_parameters(
    route: Route,
    bindings: Sequence[Binding],
    at: tuple[str | int, ...],
    checker: Checker,
    refused: bool = False,
) -> None:
    """Every parameter a key or header uses must be in each address written through, and every
    address parameter read back must be recoverable from the record (its key or a header).

    One mistake, one problem: a name in the key that no address has is the key's typo and is
    reported there; a name some addresses have and one lacks is that address's problem. A route
    whose key or headers are wrong (refused by the schema, or naming no parameter) is not also
    told its addresses cannot be read back: that follows, and goes once the key is fixed.
    """
    recoverable = _used_parameters(route)
    everywhere = {p for _, binding, _, _ in bindings for p in binding.template.parameters}
    templates_wrong = refused
    for where, binding, writes, _reads in bindings:
        if not writes:
            continue
        params = set(binding.template.parameters)
        for missing in sorted(recoverable - params):
            user = _where_used(route, missing)
            user_name = "the key" if user == ("key",) else f"header {user[-1]!r}"
            if missing in everywhere:
                # Its own parameter nobody uses, and close to the missing one: the typo.
                unused = difflib.get_close_matches(missing, sorted(params - recoverable), n=1)
                hint = f"; is {{{unused[0]}}} meant to be {{{missing}}}?" if unused else ""
                checker.add(
                    (*at, *where),
                    f"{binding.template.source!r} has no {{{missing}}}, which {user_name} "
                    f"uses{hint}",
                )
            else:
                templates_wrong = True
                checker.add(
                    (*at, *user),
                    f"{{{missing}}} is not a parameter of {'/'.join(map(str, where))} "
                    f"{binding.template.source!r}{did_you_mean(missing, params)}",
                )
    if templates_wrong:
        return
    for where, binding, _writes, reads in bindings:
        if not reads:
            continue
        for missing in sorted(set(binding.template.parameters) - recoverable):
            checker.add(
                (*at, *where),
                f"parameter {{{missing}}} cannot be read back from a Kafka record: "
                "use it in `key` or in a header",
            )


def _check_identity(
    route: Route, bindings: Sequence[Binding], at: tuple[str | int, ...], checker: Checker
) -> None:
    """``identity`` names an address parameter; one no address has would check nobody."""
    identity = route.access.identity
    if identity is None:
        return
    params = {p for _, binding, _, _ in bindings for p in binding.template.parameters}
    if route.grpc is not None:
        # gRPC callers name the parameters themselves; the ones the record carries count.
        templates = [*route.headers.values(), *([route.key] if route.key else [])]
        params |= {p for t in templates for p in t.parameters}
    if identity not in params:
        addresses = ", ".join(repr(binding.template.source) for _, binding, _, _ in bindings)
        checker.add(
            (*at, "access", "identity"),
            f"{identity!r} is not a parameter of this route's addresses ({addresses or 'none'})"
            f": nobody's identity would be checked{did_you_mean(identity, params)}",
        )


def _check_roles(access: Access, at: tuple[str | int, ...], checker: Checker) -> None:
    """A near miss of a role with a meaning ("anonymus") would silently be a role name no
    token carries: refused, with the word it resembles."""
    special = (ANONYMOUS_ROLE, AUTHENTICATED_ROLE)
    for action, roles in (("publish", access.publish), ("subscribe", access.subscribe)):
        for i, role in enumerate(roles or ()):
            if role in special:
                continue
            close = [r for r in special if r == role.lower()] or difflib.get_close_matches(
                role.lower(), special, n=1, cutoff=0.88
            )
            if close:
                checker.add(
                    (*at, "access", action, i),
                    f"{role!r} would be a role name tokens carry; did you mean {close[0]!r}?",
                )


def _where_used(route: Route, name: str) -> tuple[str, ...]:
    """The field of ``route`` whose template uses parameter ``name``: its key or a header."""
    if route.key is not None and name in route.key.parameters:
        return ("key",)
    for header, template in route.headers.items():
        if name in template.parameters:
            return ("headers", header)
    return ("key",)


def _used_parameters(route: Route) -> set[str]:
    used: set[str] = set(route.key.parameters if route.key else ())
    for template in route.headers.values():
        used.update(template.parameters)
    return used


def _check_routes(routes: Sequence[Route], checker: Checker) -> None:
    seen: dict[str, int] = {}
    for route in routes:
        if route.name in seen and route.name:
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
