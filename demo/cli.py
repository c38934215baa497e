"""``edgebridge demo``: the demo's command, added to the ``edgebridge`` CLI through the
``edgebridge.commands`` entry point group (the core never imports the demo)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from bridge.process.cli import add_config, config_path, load, positive
from bridge.telemetry import log as bridge_log
from bridge.web.sockets import CannotListen
from demo.main import SHIPPED_CONFIG, DemoOptions, Schedule, run_demo


def register(commands: argparse._SubParsersAction[Any]) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the sports-betting demo (start here)",
        description="Start the embedded broker, the bridge with the demo routing.toml, "
        "simulated stadium scoreboards (MQTT), an odds engine and a bet processor (Kafka), and "
        "serve the demo page on the bridge's HTTP listener. Ctrl-C stops everything.",
    )
    add_config(demo)
    demo.add_argument("--port", type=int, default=3000, help="HTTP port of the page (default 3000)")
    demo.add_argument("--mqtt-port", type=int, help="MQTT port (default: from routing.toml)")
    demo.add_argument(
        "--grpc-port", type=int, default=50051, help="gRPC port (partner odds; default 50051)"
    )
    demo.add_argument(
        "--admin-port", type=int, help="metrics/health port (default: from routing.toml)"
    )
    demo.add_argument(
        "--matches",
        type=int,
        default=4,
        choices=range(1, 7),
        metavar="1-6",
        help="concurrent matches (default 4)",
    )
    demo.add_argument(
        "--tick", type=positive, default=1.0, help="seconds per match minute (default 1.0)"
    )
    demo.add_argument("--log-format", choices=["auto", "json", "pretty"])
    demo.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    if args.config is None and not path.exists():
        path = SHIPPED_CONFIG  # run from anywhere in a source checkout
    config = load(path)
    bridge_log.configure(args.log_format or "auto", args.log_level or "info")
    options = DemoOptions(
        http_port=args.port,
        mqtt_port=args.mqtt_port,
        admin_port=args.admin_port,
        grpc_port=args.grpc_port,
        matches=args.matches,
        schedule=Schedule(tick_s=args.tick),
    )
    try:
        asyncio.run(run_demo(config, options))
    except KeyboardInterrupt:
        pass
    except CannotListen as exc:  # a demo already running, most often: one line, not a traceback
        print(f"edgebridge demo: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
