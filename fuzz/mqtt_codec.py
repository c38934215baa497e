"""Coverage-guided fuzzing of the MQTT codec (atheris / libFuzzer).

    .venv/bin/python fuzz/mqtt_codec.py -runs=1000000          # the release bar: zero crashes
    .venv/bin/python fuzz/mqtt_codec.py -max_total_time=60     # a minute of it

Each input is fed to three decoders: a fresh one (must start with CONNECT) and ones that already
accepted a 3.1.1 and a 5.0 CONNECT, so every packet type is reachable. The input is split at a
fuzzer-chosen point to exercise buffering. A finding is any exception other than
MQTTProtocolError, an MQTTProtocolError raised by the codec's internal safety net (it means a
reader missed a bounds check), or a decoded packet that does not survive encode -> decode.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from protocols.mqtt.wire.codec import Decoder, encode
    from protocols.mqtt.wire.packets import Connect, MQTTProtocolError

CONNECT_V4 = encode(Connect(protocol_level=4, client_id="fuzz", clean_start=True, keepalive=0), 4)
CONNECT_V5 = encode(Connect(protocol_level=5, client_id="fuzz", clean_start=True, keepalive=0), 5)


def _decoders() -> list[tuple[Decoder, int | None]]:
    fresh = Decoder(max_packet_size=64 * 1024)
    v4 = Decoder(max_packet_size=64 * 1024)
    v4.feed(CONNECT_V4)
    v5 = Decoder(max_packet_size=64 * 1024)
    v5.feed(CONNECT_V5)
    return [(fresh, None), (v4, 4), (v5, 5)]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    split = data[0] % (len(data))
    payload = data[1:]
    for decoder, _ in _decoders():
        packets = []
        try:
            packets += decoder.feed(payload[:split])
            packets += decoder.feed(payload[split:])
        except MQTTProtocolError as exc:
            if exc.__cause__ is not None:
                raise AssertionError(f"codec safety net caught a bug: {exc.__cause__!r}") from exc
            packets += list(getattr(exc, "packets", ()))
        version = decoder.version
        if version is None:
            continue
        for packet in packets:
            _check_round_trip(packet, version)


def _check_round_trip(packet: object, version: int) -> None:
    wire = encode(packet, version)  # type: ignore[arg-type]
    again = Decoder(
        max_packet_size=1 << 20, version=version if not isinstance(packet, Connect) else None
    )
    if not isinstance(packet, Connect):
        again.feed(CONNECT_V5 if version == 5 else CONNECT_V4)
    decoded = again.feed(wire)
    if decoded != [packet]:
        raise AssertionError(f"round trip changed {packet!r} into {decoded!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
