"""Microbenchmark of the MQTT codec: microseconds per PUBLISH, one figure per line.

The baseline is a bare ``bytes`` concatenation of the same packet measured in the same run,
so figures from different machines can be compared as ratios.
"""

from __future__ import annotations

import timeit

from protocols.mqtt.wire.codec import _ENC_CACHE, _PROP_CACHE, Decoder, encode, prepare_publish
from protocols.mqtt.wire.packets import Properties, Publish

N = 100_000


def _us(stmt: object, number: int = N) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def _enc_miss(packet: Publish) -> bytes:
    _ENC_CACHE.clear()
    return encode(packet, 5)


def main() -> None:
    payload = b"x" * 256
    topic = "sensors/42/temperature"
    q0 = Publish(topic, payload)
    q1 = Publish(topic, payload, qos=1, packet_id=1234)
    q1p = Publish(
        topic,
        payload,
        qos=1,
        packet_id=1234,
        properties=Properties(content_type="text/plain", user_properties=(("k", "v"),)),
    )
    results: list[tuple[str, float]] = []
    head = b"\x32\x9c\x02\x00\x16" + topic.encode() + b"\x04\xd2"
    results.append(("baseline bytes concat (same packet)", _us(lambda: head + payload)))
    for label, pkt, version in (
        ("encode PUBLISH qos0 v3.1.1", q0, 4),
        ("encode PUBLISH qos0 v5", q0, 5),
        ("encode PUBLISH qos1 v5", q1, 5),
        ("encode PUBLISH qos1 v5 +properties", q1p, 5),
    ):
        results.append((label, _us(lambda p=pkt, v=version: encode(p, v))))
    prepared = prepare_publish(topic, payload, qos=1)
    results.append(("prepared PUBLISH qos1 v5, per subscriber", _us(lambda: prepared.packet(77))))
    for label, pkt, version in (
        ("decode PUBLISH qos0 v3.1.1", q0, 4),
        ("decode PUBLISH qos0 v5", q0, 5),
        ("decode PUBLISH qos1 v5", q1, 5),
        ("decode PUBLISH qos1 v5 +properties", q1p, 5),
    ):
        data = encode(pkt, version)
        dec = Decoder(version=version)
        assert dec.feed(data) == [pkt]
        results.append((label, _us(lambda d=data, dec=dec: dec.feed(d))))
    data = encode(q1p, 5)
    dec = Decoder(version=5)

    def miss() -> None:
        _PROP_CACHE.clear()
        dec.feed(data)

    results.append(("decode PUBLISH qos1 v5 +properties, property cache miss", _us(miss)))
    results.append(
        ("encode PUBLISH qos1 v5 +properties, encode cache miss", _us(lambda: _enc_miss(q1p)))
    )
    batch = encode(q1, 5) * 100
    dec = Decoder(version=5)
    results.append(
        (
            "decode PUBLISH qos1 v5, 100 per feed, per packet",
            _us(lambda: dec.feed(batch), 2000) / 100,
        )
    )
    for label, us in results:
        print(f"{label}: {us:.2f} us")


if __name__ == "__main__":
    main()
