"""``edgebridge mcp``: the MCP front-end over stdio, for desktop MCP hosts that start a server as a
child process. Added through the ``edgebridge.commands`` entry point group (the core never
imports a front-end).

The process is a bridge without listeners (Kafka only): the host speaks MCP on stdin/stdout,
logs go to stderr. The caller's token comes from ``--token`` or ``$EDGEBRIDGE_TOKEN`` and is
checked once at start by the same guard as every other front-end: its roles decide the tools.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from bridge.edge.access import ANONYMOUS, Principal
from bridge.edge.guard import AuthError
from bridge.model.config import Config
from bridge.model.products import mcp_path, publish_idempotency
from bridge.process import event_loop
from bridge.process.cli import add_config, config_path, load
from bridge.telemetry import log as bridge_log

TOKEN_ENV = "EDGEBRIDGE_TOKEN"


def register(commands: argparse._SubParsersAction[Any]) -> None:
    sub = commands.add_parser(
        "mcp",
        help="serve the data products to an AI agent over MCP on stdin/stdout",
        description="Run the MCP front-end over stdio (for desktop MCP hosts): tools and "
        "resources generated from routing.toml, filtered by the token's roles. Connects to "
        "Kafka like `edgebridge run` but opens no listeners. Logs go to stderr.",
    )
    add_config(sub)
    sub.add_argument("--token", help=f"the caller's JWT (default: ${TOKEN_ENV})")
    sub.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sub.set_defaults(handler=cmd_mcp)


def without_listeners(config: Config) -> Config:
    return dataclasses.replace(config, http_listener=None, mqtt_listener=None, admin_listener=None)


def cmd_mcp(args: argparse.Namespace) -> int:
    loaded = load(config_path(args.config))
    options = dict(loaded.http_listener.options) if loaded.http_listener is not None else {}
    limits = (float(options.get("mcp_rate_per_s", 10.0)), int(options.get("mcp_burst", 20)))
    config = without_listeners(loaded)
    ledger = (str(options.get("mcp_idempotency_topic", "edgebridge.mcp-ledger")), options)
    bridge_log.configure("json", args.log_level or "warning")  # stderr: stdout is the protocol
    from bridge.edge.guard import Guard

    token = args.token or os.environ.get(TOKEN_ENV)
    principal: Principal = ANONYMOUS
    guard = Guard(config.guard_settings)
    if guard.enabled:
        if not token:
            print(f"a token is required: --token or ${TOKEN_ENV}", file=sys.stderr)
            return 2
        try:
            principal = guard.authenticate(token)
        except AuthError as exc:
            print(f"the token is refused: {exc}", file=sys.stderr)
            return 2
    try:
        event_loop.run(_serve(config, principal, limits, token, mcp_path(loaded), ledger))
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(
    config: Config,
    principal: Principal,
    limits: tuple[float, int],
    token: str | None,
    path: str | None,
    ledger_settings: tuple[str, dict[str, Any]],
) -> None:
    import socket

    from mcp.server.stdio import stdio_server

    from bridge.edge.idempotency import IdempotencyStore
    from bridge.kafka.topic_admin import ensure_topics
    from bridge.process.runtime import Bridge
    from protocols.mcp.idempotency import (
        STDIO_ADDRESS_PREFIX,
        Forward,
        McpLedger,
        forward_call,
        ledger_topic_spec,
        rebuild,
    )
    from protocols.mcp.operations import Operations, RateLimiter
    from protocols.mcp.resources import Watches
    from protocols.mcp.server import McpService

    bridge = Bridge(config, frontends=[])
    await bridge.start()
    producer, hub = bridge.kafka
    ledger = None
    # No listener: an address no other instance forwards to (they answer "retry" for the keys
    # this process decides); this process forwards its calls for other keys to their owners.
    address = f"{STDIO_ADDRESS_PREFIX}{socket.gethostname()}:{os.getpid()}"
    if any(publish_idempotency(r) != "off" for r in bridge.routes.routes):
        topic, options = ledger_settings
        await ensure_topics(config.kafka, bridge.bootstrap, [ledger_topic_spec(topic)])
        timeout_ms = int(options.get("idempotency_session_timeout_ms", 6000))
        store = IdempotencyStore(
            producer,
            config.kafka,
            bridge.bootstrap,
            address,
            rebuild,
            topic,
            session_timeout_ms=timeout_ms,
        )
        ledger = McpLedger(store)

    def forward_of(ctx: Any, tool: str, arguments: dict[str, Any]) -> Forward | None:
        if path is None:
            return None

        async def forward(owner: str) -> tuple[dict[str, Any], bool]:
            return await forward_call(
                owner, path, tool, arguments, token, address, 3 * producer.timeout_s
            )

        return forward

    from protocols.mcp.frontend import reply_topic_specs, start_followers

    await ensure_topics(config.kafka, bridge.bootstrap, reply_topic_specs(bridge.routes.routes))
    followers = await start_followers(hub, bridge.routes.routes)
    service = McpService(
        config,
        bridge.routes.routes,
        Operations(config, producer, hub, ledger, followers=followers),
        RateLimiter(*limits),
        Watches(hub),
        principal_of=lambda ctx: principal,
        forward_of=forward_of,
    )
    try:
        async with stdio_server() as (read_stream, write_stream):
            await service.server.run(
                read_stream, write_stream, service.server.create_initialization_options()
            )
    finally:
        await service.watches.close()
        if ledger is not None:
            await ledger.stop()
        for follower in followers.values():
            follower.stop()
        await bridge.stop()
