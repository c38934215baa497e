"""The ``edgebridge`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from bridge.model.config import Config, ConfigError, load_config
from bridge.process import event_loop
from bridge.telemetry import log as bridge_log

DEFAULT_CONFIG = "routing.toml"
COMMANDS_GROUP = "edgebridge.commands"

DESCRIPTION = """\
Edgebridge lets MQTT devices, browsers (Server-Sent Events) and plain HTTP clients publish to
and subscribe to Kafka topics, without knowing Kafka is there. routing.toml says which protocol
address reaches which Kafka topic, with which key, headers, schema and access rules.

With no Kafka configured (no [kafka].bootstrap, or bootstrap = "embedded") Edgebridge starts an
embedded, memory-only Kafka-compatible broker; set KAFKA_BOOTSTRAP=host:9092 (or [kafka].bootstrap)
to use a real cluster.
"""


def config_path(value: str | None) -> Path:
    return Path(value or os.environ.get("EDGEBRIDGE_CONFIG") or DEFAULT_CONFIG)


def load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path} is not valid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from exc


def cmd_check(args: argparse.Namespace) -> int:
    config = load(config_path(args.config))
    print(f"{config.path}: OK, {len(config.routes)} routes, Kafka: {config.kafka.bootstrap}")
    print(f"Kafka connection: {config.kafka.security.describe()}")
    print()
    print(format_route_table(config))
    return 0


def format_route_table(config: Config) -> str:
    header = ("route", "kafka topic", "key", "mqtt", "sse", "http", "grpc")
    rows = [header]
    for route in config.routes:
        rows.append(
            (
                route.name,
                # a route republishing another topic: "odds <- feedco-raw"
                route.topic + (f" <- {route.kafka['source']}" if route.kafka else ""),
                route.key.source if route.key else "-",
                route.mqtt.template.source if route.mqtt else "-",
                route.sse.template.source if route.sse else "-",
                ", ".join(f"{b.options.get('method')} {b.template.source}" for b in route.http)
                or "-",
                f"route={route.name}" if route.grpc is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- edgebridge catalog (issue 16 item 4) -------------------------------------------------------


def cmd_catalog(args: argparse.Namespace) -> int:
    """The data products of routing.toml; with --url, a running bridge's /catalog (live)."""
    if args.url:
        document = fetch_catalog(args.url, args.token or os.environ.get("EDGEBRIDGE_TOKEN"))
        if document is None:
            return 1
    else:
        from bridge.model.products import catalog_document

        config = load(config_path(args.config))
        document = {"bridge": config.bridge_name, "products": catalog_document(config)}
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(format_catalog(document))
    return 0


def fetch_catalog(url: str, token: str | None) -> dict[str, object] | None:
    """GET a running bridge's /catalog (the URL of the bridge or of /catalog itself)."""
    import urllib.error
    import urllib.request

    if not url.rstrip("/").endswith("/catalog"):
        url = url.rstrip("/") + "/catalog"
    request = urllib.request.Request(url, headers={"accept": "application/json"})
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            document: dict[str, object] = json.loads(response.read())
            return document
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except ValueError:
            detail = exc.reason
        hint = " (pass --token or set EDGEBRIDGE_TOKEN)" if exc.code == 401 else ""
        print(f"{url}: {exc.code} {detail}{hint}", file=sys.stderr)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return None


def _regions(jurisdiction: object) -> str:
    if not isinstance(jurisdiction, dict):
        return "anywhere"
    read = ",".join(jurisdiction.get("read", ["*"]))
    publish = ",".join(jurisdiction.get("publish", ["*"]))
    text = f"read {read}" if publish == "*" else f"read {read}; publish {publish}"
    return text + (" (local)" if jurisdiction.get("local") else "")


def _age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "never"
    if seconds < 120:
        return f"{seconds:.1f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def format_catalog(document: dict[str, object]) -> str:
    """A table, one row per product, then its addresses per protocol on the lines under it;
    the health columns when the document came from a running bridge."""
    products = document.get("products")
    assert isinstance(products, list)
    live = any("health" in p for p in products)
    header = ["product", "version", "owner", "tags", "read by", "written by", "regions"]
    if live:
        header += ["last record", "rec/s", "subs", "refused/dlq", "lag"]
    rows: list[list[str]] = [header]
    details: list[list[str]] = []
    for product in products:
        access = product["access"]
        row = [
            product["name"],
            product.get("version") or "-",
            product.get("owner") or "-",
            ",".join(product.get("tags") or []) or "-",
            ",".join(access.get("subscribe") or []) or "-",
            ",".join(access.get("publish") or []) or "-",
            _regions(product.get("jurisdiction")),
        ]
        if live:
            health = product.get("health", {})
            if health.get("status") == "unavailable":
                row += ["unavailable", "-", "-", "-", "-"]
            else:
                lag = health.get("consumer_lag")
                row += [
                    _age(health.get("last_record_age_s")),
                    f"{health.get('records_per_s', 0):.2f}",
                    str(health.get("subscribers", 0)),
                    f"{health.get('refused', 0)}/{health.get('dead_letters', 0)}",
                    "-" if lag is None else str(lag),
                ]
        rows.append(row)
        lines = []
        if product.get("description"):
            lines.append(f"  {product['description']}")
        lines.append(f"  kafka  {product['topic']} (key {product.get('key') or '-'})")
        for protocol, addresses in product["addresses"].items():
            lines.append(f"  {protocol:<5}  {', '.join(addresses)}")
        details.append(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()

    out = [line(rows[0]), "  ".join("-" * w for w in widths)]
    for row, lines in zip(rows[1:], details, strict=True):
        out.append(line(row))
        out.extend(lines)
    if live:
        out.append("")
        out.append(
            f"live figures of {document.get('bridge')} at {document.get('generated_at')}: "
            f"records/s over the last {document.get('window_s')} s, per topic and per process"
        )
    return "\n".join(out)


def cmd_run(args: argparse.Namespace) -> int:
    import structlog

    from bridge.kafka.client_settings import KafkaConnectError
    from bridge.process import workers
    from bridge.web.dispatch import RouteConflict
    from bridge.web.sockets import CannotListen

    log = structlog.get_logger("bridge.process.cli")
    workers.die_with_supervisor()  # a worker of `run --workers N`: never outlive the supervisor
    config = load(config_path(args.config))
    bridge_log.configure(args.log_format or config.log_format, args.log_level or config.log_level)
    try:
        ports = workers.parse_ports(args.listen_port or [])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    config = workers.with_listeners(config, args.host, ports)
    frontends = None if args.frontends is None else [f for f in args.frontends.split(",") if f]
    try:
        if args.workers > 1:
            passed = ["--log-format", args.log_format or config.log_format]
            passed += ["--log-level", args.log_level or config.log_level]
            if args.frontends is not None:
                passed += ["--frontends", args.frontends]
            supervisor = workers.Supervisor(config, args.workers, passed, args.host)
            return event_loop.run(supervisor.run())
        from bridge.process.runtime import Bridge

        bridge = Bridge(
            config, frontends=frontends, reuse_port=workers.SUPERVISOR_ENV in os.environ
        )
        event_loop.run(bridge.run_until_signal())
    except KeyboardInterrupt:
        pass
    except KafkaConnectError as exc:
        # One line in the log and one for the person at the terminal; no traceback: the cause
        # is named (unreachable, untrusted certificate, refused credentials).
        log.error("kafka.connect_failed", reason=str(exc))
        print(f"edgebridge: cannot start: {exc}", file=sys.stderr)
        return 1
    except RouteConflict as exc:
        log.error("listener.route_conflict", reason=str(exc))
        print(f"edgebridge: cannot start: {exc}", file=sys.stderr)
        return 1
    except CannotListen as exc:
        log.error("listener.bind_failed", reason=str(exc))
        print(f"edgebridge: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from bridge.edge.tokens import MintError, mint_token

    config = load(config_path(args.config))
    if config.guard_settings is None:
        print(f"{config.path} has no [guard]: every caller is anonymous", file=sys.stderr)
        return 2
    private_key = Path(args.key).read_bytes() if args.key else None
    extra: dict[str, str] = {}
    if args.region:
        if not config.region_claim:
            print(f"{config.path} has no [guard] region_claim to put --region in", file=sys.stderr)
            return 2
        extra[config.region_claim] = args.region
    try:
        token = mint_token(
            config.guard_settings,
            args.sub,
            args.role or [],
            args.ttl,
            private_key=private_key,
            algorithm=args.algorithm,
            extra_claims=extra or None,
        )
    except MintError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 if the admin listener answers 200 (the container HEALTHCHECK)."""
    import urllib.error
    import urllib.request

    url = args.url
    if url is None:
        config = load(config_path(args.config))
        admin = config.admin_listener
        if admin is None:
            print("no [listeners.admin] in the config; pass --url", file=sys.stderr)
            return 2
        host = "127.0.0.1" if admin.host in ("0.0.0.0", "::") else admin.host
        url = f"http://{host}:{admin.port}/{'readyz' if args.ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {'ok' if ok else 'not ok'}")
    return 0 if ok else 1


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from bridge.apidocs.asyncapi import asyncapi_document

    print(json.dumps(asyncapi_document(load(config_path(args.config))), indent=2))
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from bridge.apidocs.openapi import openapi_document

    print(json.dumps(openapi_document(load(config_path(args.config))), indent=2))
    return 0


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
    return value


def add_config(sub: argparse.ArgumentParser) -> None:
    """The ``--config`` option every command that reads routing.toml takes."""
    sub.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"routing file (default: $EDGEBRIDGE_CONFIG or ./{DEFAULT_CONFIG})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgebridge",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run the bridge",
        description="Run the bridge: open the MQTT and HTTP listeners routing.toml declares and "
        "relay traffic to and from Kafka until SIGTERM or Ctrl-C (which drain gracefully: stop "
        "accepting, flush the producer, close).",
    )
    add_config(run)
    run.add_argument(
        "--log-format",
        choices=["auto", "json", "pretty"],
        help="log output (default: from config, else auto)",
    )
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    from bridge.process.workers import default_workers

    run.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help="worker processes sharing the listening ports (SO_REUSEPORT); a worker that dies "
        "is restarted (default: $EDGEBRIDGE_WORKERS, else the CPU count)",
    )
    run.add_argument(
        "--host", help="listen on HOST for every listener (e.g. 0.0.0.0 in a container)"
    )
    run.add_argument(
        "--frontends",
        metavar="LIST",
        help="comma-separated front-ends to run (default: every installed one)",
    )
    run.add_argument(
        "--listen-port", action="append", help=argparse.SUPPRESS
    )  # supervisor -> worker
    run.set_defaults(handler=cmd_run)

    token = commands.add_parser(
        "token",
        help="mint a token the configured guard accepts (demo, tests)",
        description="Print a JWT for --sub with --role(s), signed with the [guard] HMAC secret "
        "(the demo's comes from $EDGEBRIDGE_JWT_SECRET) or with --key PRIVATE.pem.",
    )
    add_config(token)
    token.add_argument("--sub", required=True, help="the identity (the guard's identity claim)")
    token.add_argument("--role", action="append", help="a role (repeatable)")
    token.add_argument(
        "--ttl", type=float, default=3600, help="seconds until expiry (default 3600)"
    )
    token.add_argument("--key", metavar="FILE", help="PEM private key for RS*/ES* guards")
    token.add_argument("--algorithm", help="signature algorithm (default: from the guard)")
    token.add_argument(
        "--region", help="the caller's region (in the guard's region_claim), for jurisdiction"
    )
    token.set_defaults(handler=cmd_token)

    health = commands.add_parser(
        "health",
        help="probe the admin listener (exit 0 when healthy; for container health checks)",
    )
    add_config(health)
    health.add_argument("--url", help="URL to probe (default: /healthz of [listeners.admin])")
    health.add_argument("--ready", action="store_true", help="probe /readyz instead of /healthz")
    health.add_argument("--timeout", type=float, default=3.0)
    health.set_defaults(handler=cmd_health)

    check = commands.add_parser(
        "check",
        help="validate routing.toml and print the route table",
        description="""\
Validate routing.toml and print the route table. Every problem is reported at once, in file
order, at the line of the value that is wrong: unknown fields (with the closest known one),
wrong types and values, schema files that cannot be read or are not JSON Schemas, key/header
templates naming a parameter an address lacks, duplicate route names and addresses, access
rules that would check nobody, transform expressions that do not compile or read a variable
no expression has (at the line inside the expression), a route republishing its own topic.
`edgebridge run` refuses to start with the same lines.
Exit status 0 when valid, 2 otherwise.""",
        epilog="""examples:
  edgebridge check                         # ./routing.toml (or $EDGEBRIDGE_CONFIG)
  edgebridge check -c deploy/routing.toml

  Typos come back as:
    routing.toml:7: routes[0].key: {mtch} is not a parameter of mqtt/topic
      'stadium/{match}/score'; did you mean 'match'?
    routing.toml:14: routes[1].topik: unknown field; did you mean 'topic'?""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(check)
    check.set_defaults(handler=cmd_check)

    catalog = commands.add_parser(
        "catalog",
        help="list the data products (with --url: a running bridge's live health)",
        description="List every route of routing.toml as a data product: description, owner, "
        "tags, version, the addresses that reach it per protocol (MQTT topics, SSE and HTTP "
        "paths, MCP tools, gRPC methods), who may read and write it, and where (jurisdiction). "
        "With --url, read a running bridge's GET /catalog instead, which adds live health: last "
        "record, records/s over the last minute, subscribers, refused and dead-lettered "
        "payloads, hub consumer lag.",
        epilog="examples:\n  edgebridge catalog -c routing.toml\n"
        '  edgebridge catalog --url http://127.0.0.1:8080 --token "$(edgebridge token --sub ops)"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config(catalog)
    catalog.add_argument("--json", action="store_true", help="print the JSON document instead")
    catalog.add_argument("--url", help="a running bridge (its HTTP listener) to read /catalog from")
    catalog.add_argument("--token", help="bearer token for --url (default: $EDGEBRIDGE_TOKEN)")
    catalog.set_defaults(handler=cmd_catalog)

    for name, handler, what in (
        ("asyncapi", cmd_asyncapi, "AsyncAPI 3.0 (MQTT, SSE, HTTP and Kafka channels)"),
        ("openapi", cmd_openapi, "OpenAPI 3.1 (HTTP and event-stream paths)"),
    ):
        sub = commands.add_parser(
            name,
            help=f"print the {what} document of routing.toml",
            description=f"Print the {what} document generated from routing.toml and its route "
            "schemas, as JSON. A running bridge serves it too (/asyncapi.json, /openapi.json, "
            "and a readable page at /docs).",
        )
        add_config(sub)
        sub.set_defaults(handler=handler)

    # Commands other packages add (the demo's `edgebridge demo`), found like front-ends through
    # an entry point group, so the core never imports them.
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        # `edgebridge asyncapi | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
