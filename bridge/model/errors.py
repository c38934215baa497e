"""Errors the core raises that every front-end maps into its own protocol."""


class BridgeError(Exception):
    """Base of the core's errors."""


class KafkaUnavailable(BridgeError):
    """Kafka did not acknowledge in time; clients should retry (HTTP 503, MQTT no PUBACK)."""


class UnknownTopic(BridgeError):
    """A subscription or fetch named a Kafka topic that does not exist."""
