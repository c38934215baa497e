"""Other real clients and transports: mosquitto_pub / mosquitto_sub (Debian mosquitto-clients),
amqtt's client, MQTT over WebSocket, MQTT over TLS."""

from __future__ import annotations

import asyncio
import ssl
import subprocess

import pytest
from mqtt_support import catch_all_routes, mqtt_port, unique
from tls_certs import self_signed


async def test_mosquitto_pub_and_sub_both_versions(mqtt_bridge, kafka_records):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        f"{prefix}/stadium/+/score",
        "-C",
        "2",
        "-v",
        "-W",
        "20",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    await asyncio.sleep(1.0)  # let it subscribe (its SUBACK is not observable from here)
    for version, payload in (("mqttv311", "1-0"), ("mqttv5", "2-0")):
        pub = await asyncio.create_subprocess_exec(
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-V",
            version,
            "-q",
            "1",
            "-t",
            f"{prefix}/stadium/m3/score",
            "-m",
            payload,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = await pub.communicate()
        assert pub.returncode == 0, err
    out, err = await sub.communicate()
    assert sub.returncode == 0, err
    assert out.decode().splitlines() == [
        f"{prefix}/stadium/m3/score 1-0",
        f"{prefix}/stadium/m3/score 2-0",
    ]
    assert [r.value for r in await kafka_records(f"{prefix}-scores", 2)] == [b"1-0", b"2-0"]


async def test_mosquitto_pub_refused_publish_fails_visibly(mqtt_bridge):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix, "max_qos = 0")))
    pub = await asyncio.create_subprocess_exec(
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        f"{prefix}/stadium/m3/score",
        "-m",
        "x",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, _err = await pub.communicate()
    assert pub.returncode != 0  # DISCONNECT 0x9B: the route only takes QoS 0


async def test_amqtt_client_round_trip(mqtt_bridge):
    from amqtt.client import MQTTClient
    from amqtt.mqtt.constants import QOS_1

    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    subscriber = MQTTClient(client_id=unique("amqtt-sub"))
    publisher = MQTTClient(client_id=unique("amqtt-pub"))
    await subscriber.connect(f"mqtt://127.0.0.1:{port}/")
    await publisher.connect(f"mqtt://127.0.0.1:{port}/")
    try:
        granted = await subscriber.subscribe([(f"{prefix}/amqtt/#", QOS_1)])
        assert granted == [QOS_1]
        await publisher.publish(f"{prefix}/amqtt/hello", b"from amqtt", qos=QOS_1)
        message = await subscriber.deliver_message(timeout_duration=15)
        assert message is not None
        assert (message.topic, bytes(message.data)) == (f"{prefix}/amqtt/hello", b"from amqtt")
    finally:
        await publisher.disconnect()
        await subscriber.disconnect()


async def test_mqtt_over_websocket(mqtt_bridge, paho, kafka_records):
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix))
    assert bridge.web is not None
    http_port = bridge.web.port
    sub = paho(http_port, transport="websockets", ws_path="/mqtt")
    _present, code, _ = await sub.connect()
    assert code == 0
    await sub.subscribe(f"{prefix}/ws/#", qos=1)
    tcp = paho(mqtt_port(bridge))
    await tcp.connect()
    await tcp.publish(f"{prefix}/ws/a", "over tcp", qos=1)
    assert (await sub.get()).payload == b"over tcp"
    assert await sub.publish(f"{prefix}/ws/b", "over ws", qos=1) == 0
    found = await kafka_records(f"{prefix}-any", 2)
    assert sorted(r.value for r in found) == [b"over tcp", b"over ws"]


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 and its key."""
    return self_signed(tmp_path)


async def test_mqtt_over_tls(mqtt_bridge, paho, certificate, kafka_records):
    cert, key = certificate
    prefix = unique()
    bridge = await mqtt_bridge(catch_all_routes(prefix), tls_cert=str(cert), tls_key=str(key))
    client = paho(mqtt_port(bridge))
    context = ssl.create_default_context(cafile=str(cert))
    client.client.tls_set_context(context)
    await client.connect()
    assert await client.publish(f"{prefix}/secure", "encrypted", qos=1) == 0
    [record] = await kafka_records(f"{prefix}-any", 1)
    assert record.value == b"encrypted"
