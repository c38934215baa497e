"""Sans-io MQTT 3.1.1 / 5.0 codec: bytes in, packets out, and packets back to bytes.

No sockets, no asyncio. A server drives it like this::

    decoder = Decoder(max_packet_size=1 << 20)
    for packet in decoder.feed(chunk):        # any chunking; partial packets are buffered
        ...                                   # first packet is always a Connect
    writer.write(encode(Connack(), decoder.version))

Everything malformed raises :class:`MQTTProtocolError` (never ``IndexError`` and friends); its
``reason_code`` is what the server should answer with. After an error the decoder is dead: every
later ``feed`` raises the same error.

For fan-out, :func:`prepare_publish` encodes a PUBLISH once and splices in the per-subscriber
packet identifier / DUP / RETAIN bits with one ``join``.
"""

from .decoder import Decoder
from .encoder import encode
from .prepared import PreparedPublish, prepare_publish
from .properties import _ENC_CACHE, _PROP_CACHE, MAX_PACKET_SIZE, MAX_REMAINING_LENGTH

__all__ = [
    "MAX_PACKET_SIZE",
    "MAX_REMAINING_LENGTH",
    "_ENC_CACHE",
    "_PROP_CACHE",
    "Decoder",
    "PreparedPublish",
    "encode",
    "prepare_publish",
]
