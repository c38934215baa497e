"""The ``edgebridge`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from bridge import log as bridge_log
from bridge.config import Config, ConfigError, load_config

DEFAULT_CONFIG = "routing.toml"

DESCRIPTION = """\
Edgebridge lets MQTT devices, browsers (Server-Sent Events) and plain HTTP clients publish to
and subscribe to Kafka topics, without knowing Kafka is there. routing.toml says which protocol
address reaches which Kafka topic, with which key, headers, schema and access rules.

With no Kafka configured (no [kafka].bootstrap, or bootstrap = "embedded") Edgebridge starts an
embedded, memory-only Kafka-compatible broker; set KAFKA_BOOTSTRAP=host:9092 (or [kafka].bootstrap)
to use a real cluster.
"""


def _config_path(value: str | None) -> Path:
    return Path(value or os.environ.get("EDGEBRIDGE_CONFIG") or DEFAULT_CONFIG)


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path} is not valid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(2) from exc


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(_config_path(args.config))
    print(f"{config.path}: OK, {len(config.routes)} routes, Kafka: {config.kafka.bootstrap}")
    print()
    print(format_route_table(config))
    return 0


def format_route_table(config: Config) -> str:
    header = ("route", "kafka topic", "key", "mqtt", "sse", "http")
    rows = [header]
    for route in config.routes:
        rows.append(
            (
                route.name,
                route.topic,
                route.key.source if route.key else "-",
                route.mqtt.template.source if route.mqtt else "-",
                route.sse.template.source if route.sse else "-",
                ", ".join(f"{b.options.get('method')} {b.template.source}" for b in route.http)
                or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(_config_path(args.config))
    bridge_log.configure(args.log_format or config.log_format, args.log_level or config.log_level)
    from bridge.runtime import Bridge

    bridge = Bridge(config)
    try:
        asyncio.run(bridge.run_until_signal())
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgebridge",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help=f"routing file (default: $EDGEBRIDGE_CONFIG or ./{DEFAULT_CONFIG})",
        )

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
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser(
        "check",
        help="validate routing.toml and print the route table",
        description="Validate routing.toml against its schema and print the route table. Exit "
        "status 0 when valid, 2 with one line per problem (file:line: field: what is wrong).",
    )
    add_config(check)
    check.set_defaults(handler=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
