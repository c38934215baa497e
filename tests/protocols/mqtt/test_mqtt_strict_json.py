"""Money-safe JSON over MQTT, with real paho clients and the real broker: NaN, Infinity and
duplicate keys get reason 0x99 (Payload format invalid) on MQTT 5 and a closed connection on
MQTT 3.1.1, and never reach Kafka."""

from __future__ import annotations

import json

from mqtt_support import mqtt_port, unique
from raw_mqtt import _open, mqtt_connect, mqtt_publish, read_packet

SCHEMA = {
    "type": "object",
    "required": ["userId", "amount"],
    "properties": {"userId": {"type": "string"}, "amount": {"type": "number", "minimum": 0}},
}


def routes(prefix: str, schema: str) -> str:
    return f"""
[[routes]]
name = "bets"
topic = "{prefix}-bets"
schema = "{schema}"
[routes.mqtt]
topic = "{prefix}/bets"

[[routes]]
name = "json-only"
topic = "{prefix}-json"
content_type = "application/json"
[routes.mqtt]
topic = "{prefix}/json"
"""


async def test_mqtt5_non_json_numbers_and_duplicate_keys_get_0x99(
    mqtt_bridge, paho, kafka_records, tmp_path
) -> None:
    prefix = unique()
    schema = tmp_path / "bet.json"
    schema.write_text(json.dumps(SCHEMA))
    bridge = await mqtt_bridge(routes(prefix, str(schema)))
    client = paho(mqtt_port(bridge))
    await client.connect()
    bets = f"{prefix}/bets"
    # Each of these passes the schema under Python's lenient json.loads.
    assert await client.publish(bets, b'{"userId":"u1","amount":NaN}', qos=1) == 0x99
    assert await client.publish(bets, b'{"userId":"u1","amount":Infinity}', qos=1) == 0x99
    assert await client.publish(bets, b'{"userId":"u1","amount":-5,"amount":5}', qos=1) == 0x99
    # Without a schema, a publish that says it is JSON (MQTT 5 content type) must be strict JSON.
    said_json = {"ContentType": "application/json"}
    assert await client.publish(f"{prefix}/json", b'{"odds":[1.5,NaN]}', qos=1, **said_json) == 0x99
    assert await client.publish(f"{prefix}/json", b'{"odds":[1.5,2]}', qos=1, **said_json) == 0
    # The connection lives on; a good bet is the only record.
    assert await client.publish(bets, b'{"userId":"u1","amount":5}', qos=1) == 0
    records = await kafka_records(f"{prefix}-bets", 2, timeout=1.5)
    assert [r.value for r in records] == [b'{"userId":"u1","amount":5}']
    [record] = await kafka_records(f"{prefix}-json", 1)
    assert record.value == b'{"odds":[1.5,2]}'


async def test_mqtt5_qos2_nan_gets_pubrec_0x99(mqtt_bridge, kafka_records, tmp_path) -> None:
    prefix = unique()
    schema = tmp_path / "bet.json"
    schema.write_text(json.dumps(SCHEMA))
    bridge = await mqtt_bridge(routes(prefix, str(schema)))
    reader, writer = await _open(mqtt_port(bridge))
    try:
        writer.write(mqtt_connect(f"{prefix}-raw"))
        assert (await read_packet(reader))[0] == 0x20  # CONNACK
        body = b'{"userId":"u1","amount":Infinity}'
        writer.write(mqtt_publish(f"{prefix}/bets", body, qos=2, packet_id=7))
        pubrec = await read_packet(reader)
        assert pubrec[0] == 0x50 and pubrec[1:3] == b"\x00\x07"
        assert pubrec[3] == 0x99  # Payload format invalid
    finally:
        writer.close()
    assert await kafka_records(f"{prefix}-bets", 1, timeout=1.0) == []


async def test_mqtt311_nan_closes_the_connection_and_produces_nothing(
    mqtt_bridge, paho, kafka_records, tmp_path
) -> None:
    """MQTT 3.1.1 has no negative PUBACK; as for any refused payload, the connection closes."""
    prefix = unique()
    schema = tmp_path / "bet.json"
    schema.write_text(json.dumps(SCHEMA))
    bridge = await mqtt_bridge(routes(prefix, str(schema)))
    client = paho(mqtt_port(bridge), version=4)
    await client.connect()
    client.client.publish(f"{prefix}/bets", b'{"userId":"u1","amount":NaN}', qos=1)
    await client.wait_disconnected()
    assert await kafka_records(f"{prefix}-bets", 1, timeout=1.0) == []
