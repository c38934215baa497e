"""Bad input closes only the offending connection, with the right reason code, and never
crashes another connection or corrupts state. Raw sockets speak bytes; a paho client watches."""

from __future__ import annotations

import asyncio
import random

from mqtt_support import catch_all_routes, mqtt_port, unique

from protocols.mqtt.wire.codec import Decoder, encode
from protocols.mqtt.wire.packets import (
    Connack,
    Connect,
    Disconnect,
    Publish,
    Suback,
    Subscribe,
    Subscription,
)


async def read_all(reader: asyncio.StreamReader, version: int = 5) -> list:
    decoder = Decoder(version=version, server=False)
    packets = []
    while True:
        data = await asyncio.wait_for(reader.read(4096), 15)
        if not data:
            return packets
        packets.extend(decoder.feed(data))


async def raw(port: int):
    return await asyncio.open_connection("127.0.0.1", port)


async def test_malformed_and_oversized_packets_close_only_that_connection(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix), max_packet_size=1024))
    watcher = paho(port)
    await watcher.connect()
    await watcher.subscribe(f"{prefix}/alive", qos=1)

    # 1. an oversized PUBLISH after a good CONNECT: DISCONNECT 0x95, then closed
    reader, writer = await raw(port)
    writer.write(encode(Connect(protocol_level=5, client_id="big"), 5))
    decoder = Decoder(version=5, server=False)
    connack = decoder.feed(await asyncio.wait_for(reader.read(4096), 15))
    assert isinstance(connack[0], Connack) and connack[0].reason_code == 0
    writer.write(encode(Publish(f"{prefix}/alive", b"x" * 5000), 5))
    packets = await read_all(reader)
    assert isinstance(packets[-1], Disconnect) and packets[-1].reason_code == 0x95
    writer.close()

    # 2. a malformed packet (reserved flags on SUBSCRIBE): DISCONNECT 0x81
    bad_subscribe = b"\x80\x06\x00\x01\x00\x01a\x00"  # without the required flags 0b0010
    reader, writer = await raw(port)
    writer.write(encode(Connect(protocol_level=5, client_id="bad"), 5))
    assert isinstance(Decoder(version=5, server=False).feed(await reader.read(4096))[0], Connack)
    writer.write(bad_subscribe)
    packets = await read_all(reader)
    assert isinstance(packets[-1], Disconnect) and packets[-1].reason_code == 0x81
    writer.close()
    # ... pipelined right behind the CONNECT, it is refused in the CONNACK itself
    reader, writer = await raw(port)
    writer.write(encode(Connect(protocol_level=5, client_id="bad2"), 5) + bad_subscribe)
    packets = await read_all(reader)
    assert isinstance(packets[0], Connack) and packets[0].reason_code == 0x81
    writer.close()

    # 3. an unsupported protocol version: a 3.1.1-shaped CONNACK "unacceptable protocol
    # version" (1), which every client version can read, then closed
    reader, writer = await raw(port)
    writer.write(b"\x10\x0d\x00\x04MQTT\x07\x02\x00\x3c\x00\x01x")
    packets = await read_all(reader, version=4)
    assert isinstance(packets[0], Connack) and packets[0].reason_code == 1
    writer.close()

    # 4. garbage before CONNECT: closed without crashing anything
    reader, writer = await raw(port)
    writer.write(bytes(random.Random(7).getrandbits(8) for _ in range(300)))
    await read_all(reader)
    writer.close()

    # 5. an invalid filter over raw bytes: SUBACK 0x8F, connection stays
    reader, writer = await raw(port)
    writer.write(encode(Connect(protocol_level=5, client_id="filter"), 5))
    writer.write(encode(Subscribe(1, (Subscription("a/#/b", 1),)), 5))
    decoder = Decoder(version=5, server=False)
    got: list = []
    while not any(isinstance(p, Suback) for p in got):
        got.extend(decoder.feed(await asyncio.wait_for(reader.read(4096), 15)))
    assert next(p for p in got if isinstance(p, Suback)).reason_codes == (0x8F,)
    writer.close()

    # everyone else is fine
    publisher = paho(port)
    await publisher.connect()
    await publisher.publish(f"{prefix}/alive", "still here", qos=1)
    assert (await watcher.get()).payload == b"still here"


async def test_random_mutations_of_a_real_conversation_never_hurt_the_bridge(mqtt_bridge, paho):
    prefix = unique()
    port = mqtt_port(await mqtt_bridge(catch_all_routes(prefix)))
    conversation = b"".join(
        [
            encode(Connect(protocol_level=5, client_id="fuzz", keepalive=30), 5),
            encode(Subscribe(1, (Subscription(f"{prefix}/f/#", 1),)), 5),
            encode(Publish(f"{prefix}/f/1", b"payload", qos=1, packet_id=2), 5),
            encode(Disconnect(), 5),
        ]
    )
    rng = random.Random(1234)
    for _ in range(40):
        data = bytearray(conversation)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        reader, writer = await raw(port)
        writer.write(bytes(data))
        try:
            await asyncio.wait_for(reader.read(65536), 2)
        except TimeoutError:
            pass  # a mutation can leave a packet incomplete: the bridge waits for the rest
        writer.close()
    survivor = paho(port)
    await survivor.connect()
    await survivor.subscribe(f"{prefix}/ok", qos=1)
    await survivor.publish(f"{prefix}/ok", "fine", qos=1)
    assert (await survivor.get()).payload == b"fine"


async def test_mqtt311_bad_password_gets_return_code_4_when_a_guard_is_configured(
    mqtt_bridge, paho
):
    prefix = unique()
    routes = (
        '[guard]\ntype = "jwt"\nsecret = "s3cret-for-tests-only-0123456789abcdef"\n'
        + catch_all_routes(prefix)
    )
    port = mqtt_port(await mqtt_bridge(routes))
    client = paho(port, version=4)
    _, code, _ = await client.connect(auth=("user", "not-a-jwt"))
    assert code == 0x86  # return code 4 on the wire; paho reports it as MQTT 5's 0x86
