"""Helpers for the MQTT front-end tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.process.runtime import Bridge

REPO = Path(__file__).resolve().parents[3]
TIMEOUT = 15.0


def unique(prefix: str = "m") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def bridge_config(routes: str, mqtt_port: int = 0, http_port: int = 0, **options: Any) -> str:
    """A complete routing.toml for MQTT tests (options go to ``[listeners.mqtt]``)."""
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
    return f"""
[bridge]
name = "mqtt-test"
log_level = "warning"

[kafka]
fetch_max_wait_ms = 10
request_timeout_ms = 5000

[listeners.mqtt]
host = "127.0.0.1"
port = {mqtt_port}
{lines}

[listeners.http]
host = "127.0.0.1"
port = {http_port}

{routes}
"""


def catch_all_routes(prefix: str, extra: str = "") -> str:
    """A specific route ``{prefix}/stadium/{{match}}/score`` plus a catch-all, own Kafka topics."""
    return f"""
[[routes]]
name = "scores"
topic = "{prefix}-scores"
key = "{{match}}"

[routes.mqtt]
topic = "{prefix}/stadium/{{match}}/score"
{extra}

[[routes]]
name = "any"
topic = "{prefix}-any"
key = "{{topic}}"

[routes.mqtt]
topic = "{prefix}/{{topic...}}"
"""


def reset_property(message: Any) -> str | None:
    """The ``edgebridge-reset`` user property of a received MQTT 5 message (docs/mqtt.md)."""
    props = getattr(message.properties, "UserProperty", None) or []
    return next((value for name, value in props if name == "edgebridge-reset"), None)


def mqtt_port(bridge: Bridge) -> int:
    port = bridge.frontend("mqtt").port
    assert port
    return int(port)


class Paho:
    """A paho-mqtt client; every blocking call is awaited in a thread."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        version: int = 5,
        clean: bool = True,
        transport: str = "tcp",
        ws_path: str = "/mqtt",
        manual_ack: bool = False,
    ) -> None:
        self.port = port
        self.version = version
        self.clean = clean
        protocol = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        kwargs: dict[str, Any] = {
            "client_id": client_id,
            "protocol": protocol,
            "transport": transport,
        }
        if version != 5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        if transport == "websockets":
            self.client.ws_set_options(path=ws_path)
        self.client.manual_ack_set(manual_ack)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: tuple[bool, int, Any] | None = None
        self.disconnect_reason: int | None = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.subacks: dict[int, list[int]] = {}
        self.pubacks: dict[int, int] = {}
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.connack = (bool(flags.session_present), int(reason.value), properties)
        self.connected.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.disconnect_reason = int(reason.value)
        self.disconnected.set()
        self.connected.clear()

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: Any, properties: Any
    ) -> None:
        with self._acked:
            self.subacks[mid] = [int(c.value) for c in codes]
            self._acked.notify_all()

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        with self._acked:
            self.pubacks[mid] = int(reason.value)
            self._acked.notify_all()

    def _wait(self, table: dict[int, Any], mid: int) -> Any:
        with self._acked:
            if not self._acked.wait_for(lambda: mid in table, TIMEOUT):
                raise TimeoutError(f"no acknowledgement for mid {mid}")
            return table[mid]

    # -- blocking ----------------------------------------------------------------------------

    def _connect(
        self,
        session_expiry: int | None,
        keepalive: int,
        props: dict[str, Any],
        will: Any,
        auth: Any,
    ) -> tuple[bool, int, Any]:
        properties = None
        if self.version == 5:
            properties = Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                properties.SessionExpiryInterval = session_expiry
            for name, value in props.items():
                setattr(properties, name, value)
        if will is not None:
            self.client.will_set(**will)
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.disconnected.clear()
        self.connack = None
        kwargs: dict[str, Any] = {"keepalive": keepalive}
        if self.version == 5:
            kwargs["clean_start"] = self.clean
            kwargs["properties"] = properties
        self.client.connect("127.0.0.1", self.port, **kwargs)
        self.client.loop_start()
        if not self.connected.wait(TIMEOUT) and self.connack is None:
            raise TimeoutError("no CONNACK")
        assert self.connack is not None
        return self.connack

    def _subscribe(
        self, topic_filter: str, qos: int, options: dict[str, Any], identifier: int | None
    ) -> list[int]:
        properties = None
        if self.version == 5:
            sub = SubscribeOptions(qos=qos, **options)
            if identifier is not None:
                properties = Properties(PacketTypes.SUBSCRIBE)
                properties.SubscriptionIdentifier = identifier
            rc, mid = self.client.subscribe(topic_filter, options=sub, properties=properties)
        else:
            rc, mid = self.client.subscribe(topic_filter, qos)
        assert rc == 0
        return self._wait(self.subacks, mid)  # type: ignore[no-any-return]

    def _publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, props: dict[str, Any]
    ) -> int:
        properties = None
        if props and self.version == 5:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        info = self.client.publish(topic, payload, qos, retain, properties)
        if qos == 0:
            return 0
        return self._wait(self.pubacks, info.mid)  # type: ignore[no-any-return]

    # -- async API -----------------------------------------------------------------------------

    async def connect(
        self,
        session_expiry: int | None = None,
        keepalive: int = 60,
        will: Any = None,
        auth: Any = None,
        **props: Any,
    ) -> tuple[bool, int, Any]:
        return await asyncio.to_thread(self._connect, session_expiry, keepalive, props, will, auth)

    async def subscribe(
        self, topic_filter: str, qos: int = 0, identifier: int | None = None, **options: Any
    ) -> list[int]:
        return await asyncio.to_thread(self._subscribe, topic_filter, qos, options, identifier)

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False, **props: Any
    ) -> int:
        data = payload.encode() if isinstance(payload, str) else payload
        return await asyncio.to_thread(self._publish, topic, data, qos, retain, props)

    async def get(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage:
        return await asyncio.to_thread(self.messages.get, True, timeout)

    async def get_many(self, count: int, timeout: float = TIMEOUT) -> list[mqtt.MQTTMessage]:
        return [await self.get(timeout) for _ in range(count)]

    async def nothing_more(self, wait: float = 1.0) -> None:
        """Assert that no further message arrives within ``wait`` seconds."""
        await asyncio.sleep(wait)
        assert self.messages.empty(), [m.payload for m in list(self.messages.queue)]

    async def wait_disconnected(self, timeout: float = TIMEOUT) -> int | None:
        await asyncio.to_thread(self.disconnected.wait, timeout)
        assert self.disconnected.is_set(), "still connected"
        return self.disconnect_reason

    async def disconnect(self, **props: Any) -> None:
        properties = None
        if props and self.version == 5:
            properties = Properties(PacketTypes.DISCONNECT)
            for name, value in props.items():
                setattr(properties, name, value)
        self.client.disconnect(properties=properties)
        await asyncio.to_thread(self.disconnected.wait, TIMEOUT)
        await asyncio.to_thread(self.client.loop_stop)

    async def drop(self) -> None:
        """Lose the connection without DISCONNECT (a phone going into a tunnel)."""
        sock = self.client.socket()
        await asyncio.to_thread(self.client.loop_stop)
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    async def close(self) -> None:
        await asyncio.to_thread(self.client.loop_stop)
        self.client.disconnect()
