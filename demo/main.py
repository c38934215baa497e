"""``edgebridge demo``: the embedded broker, the bridge with the demo routing.toml, the demo
services and the page, in one command.

The services run in this process for convenience, but each is a plain network client of the
bridge like a real deployment's would be: the scoreboards speak MQTT to the bridge's listener,
the odds engine and the bet processor speak Kafka to the broker.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from bridge.edge.tokens import mint_token
from bridge.model.config import Config, ListenerSettings
from bridge.process.runtime import Bridge
from demo import odds_engine
from demo.bet_processor import BetProcessor
from demo.oddsco_feed import OddsCoFeed
from demo.page import DemoPage
from demo.partner_feed import PartnerFeed
from demo.scoreboard import Schedule, Scoreboard

log = structlog.get_logger(__name__)
DEMO_USER = "alice"
TOKEN_TTL_S = 24 * 3600
RESTART_DELAY_S = 2.0
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "routing.toml"


FINISHED_SHOWN_TICKS = 20


@dataclass(frozen=True, slots=True)
class DemoOptions:
    http_port: int = 3000
    mqtt_port: int | None = None  # None: as routing.toml says
    admin_port: int | None = None  # None: as routing.toml says
    grpc_port: int = 50051  # the partner odds feed's gRPC listener (added if routing.toml has none)
    matches: int = 4
    schedule: Schedule = field(default_factory=Schedule)
    user: str = DEMO_USER
    seed: int = 7


def with_ports(config: Config, options: DemoOptions) -> Config:
    """The demo config with the page's port (and the MQTT and admin ports, if given)."""
    changes = {}
    if config.http_listener is not None:
        changes["http_listener"] = replace(config.http_listener, port=options.http_port)
    if config.mqtt_listener is not None and options.mqtt_port is not None:
        changes["mqtt_listener"] = replace(config.mqtt_listener, port=options.mqtt_port)
    if config.admin_listener is not None and options.admin_port is not None:
        changes["admin_listener"] = replace(config.admin_listener, port=options.admin_port)
    if config.grpc_listener is None:
        # The shipped routing.toml serves gRPC routes only when asked: the demo's partner
        # feed needs the listener, on loopback.
        changes["grpc_listener"] = ListenerSettings("127.0.0.1", options.grpc_port)
    else:
        changes["grpc_listener"] = replace(config.grpc_listener, port=options.grpc_port)
    return replace(config, **changes)  # type: ignore[arg-type]


async def run_demo(config: Config, options: DemoOptions) -> None:
    config = with_ports(config, options)
    if config.http_listener is None or config.mqtt_listener is None:
        raise SystemExit("the demo needs [listeners.http] and [listeners.mqtt] in routing.toml")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bridge = Bridge(config)
    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            await bridge.start()
        except OSError as exc:
            raise SystemExit(
                f"cannot start the demo: {exc.strerror} (is another demo or bridge running? "
                "choose other ports with --port / --mqtt-port / --admin-port / --grpc-port)"
            ) from exc
        assert bridge.web is not None
        page = DemoPage(
            {
                "user": options.user,
                "token": _token(config, options.user, ["bettor"]),
                # A caller from France, for the page's GB-only market check (jurisdiction).
                "visitorToken": _token(config, "visitor-fr", ["bettor"], region="fr"),
                # A finished match's card stays 20 match-minutes, then leaves the page.
                "finishedShownMs": round(FINISHED_SHOWN_TICKS * options.schedule.tick_s * 1000),
            }
        )
        for path in page.paths():
            bridge.web.route("the demo page", path, ("GET", "HEAD"), page)
        tasks = _services(bridge, config, options, stop)
        _announce(config, bridge.web.port, _mqtt_address(bridge, config)[1], _grpc_port(bridge))
        await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await bridge.stop()


def _services(
    bridge: Bridge, config: Config, options: DemoOptions, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    processor = BetProcessor(bridge.bootstrap, users=[options.user])
    mqtt_host, mqtt_port = _mqtt_address(bridge, config)
    services: dict[str, Callable[[], Awaitable[None]]] = {
        "odds-engine": lambda: odds_engine.run(bridge.bootstrap, stop),
        "bet-processor": lambda: processor.run(stop),
    }
    grpc_port = _grpc_port(bridge)
    if grpc_port is not None:
        feed = PartnerFeed(f"127.0.0.1:{grpc_port}", _token(config, "acme-odds", ["odds-partner"]))
        services["partner-feed"] = functools.partial(feed.run, stop)
    oddsco = OddsCoFeed(mqtt_host, mqtt_port, _token(config, "oddsco", ["odds-provider"]))
    services["oddsco-feed"] = functools.partial(oddsco.run, stop)
    for slot in range(options.matches):
        board = Scoreboard(
            slot,
            mqtt_host,
            mqtt_port,
            _token(config, f"scoreboard-{slot}", ["scoreboard"]),
            options.schedule,
            seed=options.seed + slot,
        )
        services[f"scoreboard-{slot}"] = functools.partial(board.run, stop)
    return [
        asyncio.create_task(_supervise(name, start, stop), name=name)
        for name, start in services.items()
    ]


async def _supervise(name: str, start: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run a service; if it fails, log why and start it again (as a process manager would)."""
    while not stop.is_set():
        try:
            await start()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("demo.service_failed", service=name, restart_in_s=RESTART_DELAY_S)
            try:
                await asyncio.wait_for(stop.wait(), RESTART_DELAY_S)
            except TimeoutError:
                pass


def _mqtt_address(bridge: Bridge, config: Config) -> tuple[str, int]:
    assert config.mqtt_listener is not None
    host = config.mqtt_listener.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    port = config.mqtt_listener.port
    try:
        port = bridge.frontend("mqtt").port or port
    except StopIteration:
        log.warning("demo.no_mqtt_frontend", detail="scoreboards cannot publish")
    return host, port


def _grpc_port(bridge: Bridge) -> int | None:
    try:
        port: int | None = bridge.frontend("grpc").port
    except StopIteration:
        log.warning("demo.no_grpc_frontend", detail="the partner odds feed does not run")
        return None
    return port


def _token(config: Config, subject: str, roles: list[str], region: str | None = None) -> str | None:
    if config.guard_settings is None:
        return None  # no guard: everyone is anonymous and tokens are ignored
    claims = {config.region_claim: region} if region and config.region_claim else None
    return mint_token(config.guard_settings, subject, roles, TOKEN_TTL_S, extra_claims=claims)


def _announce(config: Config, port: int, mqtt_port: int, grpc_port: int | None) -> None:
    assert config.http_listener is not None
    host = config.http_listener.host
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::", "::1") else host
    base = f"http://{shown}:{port}"
    log.info("demo.ready", page=base, docs=f"{base}/docs", stop="Ctrl-C")
    print(
        f"\n  Edgebridge demo is running.\n"
        f"    Open the page:  {base}\n"
        f"    API docs:       {base}/docs  ({base}/asyncapi.json, {base}/openapi.json)\n"
        f"    MQTT:           mqtt://{shown}:{mqtt_port}  (scores: stadium/+/score; OddsCo "
        f"prices: providers/oddsco/+)\n"
        f"    gRPC:           {shown}:{grpc_port}  (edgebridge.v1.Bridge; partner odds)\n"
        f"    Stop:           Ctrl-C\n",
        file=sys.stderr,
        flush=True,
    )
