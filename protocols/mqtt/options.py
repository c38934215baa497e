"""``[listeners.mqtt]`` options (see the ``mqtt_listener`` entry of bridge/model/config.schema.json)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .wire.connection import Limits

SESSIONS_TOPIC = "edgebridge.mqtt.sessions"
RETAINED_TOPIC = "edgebridge.mqtt.retained"


@dataclass(frozen=True, slots=True)
class MqttOptions:
    tls_cert: str | None = None
    tls_key: str | None = None
    websocket_path: str | None = "/mqtt"  # on the HTTP listener; None: no MQTT over WebSocket
    max_packet_size: int = 1 << 20
    receive_maximum: int = 1024
    topic_alias_maximum: int = 64
    outbound_topic_aliases: int = 256  # per connection, when the client allows; 0: never
    max_queued: int = 10_000
    server_keep_alive: int | None = None
    max_keep_alive: int | None = None
    max_session_expiry: int = 0xFFFFFFFF
    qos0_acks: str = "1"  # Tansu: acks=0 makes aiokafka reconnect after every send
    qos0_linger_ms: int = 0  # QoS 0 records wait this long for company in their Kafka batch
    session_flush_s: float = 1.0
    expiry_sweep_s: float = 60.0
    connect_timeout_s: float = 10.0
    instance_timeout_s: float = 30.0  # no heartbeat for this long: the instance is dead
    max_write_buffer: int = 4 << 20
    sessions_topic: str = SESSIONS_TOPIC
    retained_topic: str = RETAINED_TOPIC

    @classmethod
    def from_options(cls, raw: Mapping[str, Any]) -> MqttOptions:
        known = {name: raw[name] for name in cls.__slots__ if name in raw}
        if "qos0_acks" in known:
            known["qos0_acks"] = {0: "0", 1: "1", -1: "all"}.get(
                known["qos0_acks"], str(known["qos0_acks"])
            )
        if known.get("websocket_path") in ("", False):
            known["websocket_path"] = None
        return cls(**known)

    def limits(self) -> Limits:
        return Limits(
            max_packet_size=self.max_packet_size,
            receive_maximum=self.receive_maximum,
            topic_alias_maximum=self.topic_alias_maximum,
            outbound_topic_aliases=self.outbound_topic_aliases,
            max_queued=self.max_queued,
            server_keep_alive=self.server_keep_alive,
            max_keep_alive=self.max_keep_alive,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if not (self.tls_cert and self.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        return context
