"""Positions: where a reader is in a Kafka topic, and their compact url-safe encoding.

A position maps each partition to the *next* offset to read. It is what an SSE event id, an
HTTP ETag and an MQTT session's subscription record carry, so that any bridge instance can resume
a reader exactly, with no server-side state.

Encoding, before base64url without padding::

    0x01 | varint stream_tag | varint count | count * (varint partition, varint next_offset)
    0x02 | varint stream_tag | varint epoch | varint count | count * (...)

``stream_tag`` is a 32-bit checksum of what the position is a position *in* (the route and its
parameters). Decoding with a different expected tag fails, so an id from one stream can never
silently resume another.

``epoch`` names the incarnation of the topic the offsets belong to (a checksum of Kafka's topic
id, :func:`epoch_of`): a topic deleted and created again restarts its offsets at 0, and an offset
of the old one must never be read as a place in the new one. 0 means "unknown" (a broker without
topic ids, or an id made before epochs existed: version 1, still accepted), and is written as
version 1, so such ids are unchanged.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterable, Iterator, Mapping

VERSION = 1
VERSION_WITH_EPOCH = 2
MAX_ENCODED_LENGTH = 1024


class PositionError(ValueError):
    """An encoded position that cannot be decoded, or that belongs to another stream."""


def epoch_of(topic_id: bytes | None) -> int:
    """The epoch of a topic incarnation from its Kafka topic id: a non-zero 32-bit checksum, or 0
    when there is no id."""
    if not topic_id:
        return 0
    return zlib.crc32(topic_id) or 1


def stream_tag(*parts: str) -> int:
    """A stable 32-bit tag naming a stream (route name, parameters...)."""
    return zlib.crc32("\x1f".join(parts).encode())


class Position(Mapping[int, int]):
    """Immutable map partition -> next offset to read, in one incarnation (``epoch``) of a topic."""

    __slots__ = ("_offsets", "epoch")

    def __init__(
        self, offsets: Mapping[int, int] | Iterable[tuple[int, int]] = (), epoch: int = 0
    ) -> None:
        self._offsets: dict[int, int] = dict(offsets)
        self.epoch = epoch

    def __getitem__(self, partition: int) -> int:
        return self._offsets[partition]

    def __iter__(self) -> Iterator[int]:
        return iter(self._offsets)

    def __len__(self) -> int:
        return len(self._offsets)

    def __repr__(self) -> str:
        inner = ", ".join(f"{p}:{o}" for p, o in sorted(self._offsets.items()))
        return f"Position({inner}{f' @{self.epoch:08x}' if self.epoch else ''})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Position):
            return self._offsets == other._offsets and self.epoch == other.epoch
        return NotImplemented

    def __hash__(self) -> int:
        return hash((frozenset(self._offsets.items()), self.epoch))

    def advanced(self, partition: int, offset: int) -> Position:
        """The position after reading the record at ``offset`` of ``partition``."""
        offsets = dict(self._offsets)
        offsets[partition] = offset + 1
        return Position._wrap(offsets, self.epoch)

    def merged(self, other: Mapping[int, int]) -> Position:
        """Per partition, the further of the two positions."""
        offsets = dict(self._offsets)
        for partition, offset in other.items():
            if offset > offsets.get(partition, -1):
                offsets[partition] = offset
        return Position._wrap(offsets, self.epoch)

    def is_at_or_after(self, other: Mapping[int, int]) -> bool:
        """True if this position is at or past ``other`` on every partition of ``other``."""
        return all(self._offsets.get(p, 0) >= o for p, o in other.items())

    def to_dict(self) -> dict[int, int]:
        return dict(self._offsets)

    @classmethod
    def _wrap(cls, offsets: dict[int, int], epoch: int = 0) -> Position:
        position = cls.__new__(cls)
        position._offsets = offsets
        position.epoch = epoch
        return position

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, tag: int = 0) -> str:
        out = bytearray([VERSION_WITH_EPOCH if self.epoch else VERSION])
        _put_varint(out, tag)
        if self.epoch:
            _put_varint(out, self.epoch)
        _put_varint(out, len(self._offsets))
        for partition in sorted(self._offsets):
            _put_varint(out, partition)
            _put_varint(out, self._offsets[partition])
        return base64.urlsafe_b64encode(bytes(out)).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str, tag: int | None = 0) -> Position:
        """Decode ``text``; with ``tag`` not None, require that stream tag."""
        if not text or len(text) > MAX_ENCODED_LENGTH:
            raise PositionError("position is empty or too long")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError) as exc:
            raise PositionError("position is not base64url") from exc
        if not raw or raw[0] not in (VERSION, VERSION_WITH_EPOCH):
            raise PositionError("unknown position version")
        reader = _VarintReader(raw, 1)
        found_tag = reader.read()
        if tag is not None and found_tag != tag:
            raise PositionError("position belongs to another stream")
        epoch = reader.read() if raw[0] == VERSION_WITH_EPOCH else 0
        count = reader.read()
        offsets: dict[int, int] = {}
        for _ in range(count):
            partition = reader.read()
            if partition in offsets:
                raise PositionError("partition repeated in position")
            offsets[partition] = reader.read()
        if reader.index != len(raw):
            raise PositionError("trailing bytes in position")
        return cls._wrap(offsets, epoch)


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError("varint must be non-negative")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


class _VarintReader:
    __slots__ = ("data", "index")

    def __init__(self, data: bytes, index: int) -> None:
        self.data = data
        self.index = index

    def read(self) -> int:
        value = shift = 0
        while True:
            if self.index >= len(self.data):
                raise PositionError("position is truncated")
            byte = self.data[self.index]
            self.index += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise PositionError("varint too long in position")
