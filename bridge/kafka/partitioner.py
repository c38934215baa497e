"""Kafka's default key partitioner, with the key's hash cached.

aiokafka hashes every keyed record with a pure-Python murmur2 (~10 us per record on this
machine). Front-ends key records by something that repeats (the MQTT topic name, an SSE/HTTP
path parameter), so the hash of a key is worth remembering. Only the hash is cached, never the
partition: the partition is still ``hash % len(all_partitions)`` on the metadata of this very
call, so a topic that gains partitions is partitioned exactly as Kafka's Java client and
aiokafka's ``DefaultPartitioner`` would (byte-compatible: same key, same partition).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from functools import lru_cache

CACHED_KEYS = 65_536  # ~100 B per entry: a few MiB at most, and a hot key never re-hashed


class CachingPartitioner:
    """A drop-in ``partitioner=`` for :class:`aiokafka.AIOKafkaProducer`."""

    def __init__(self, cached_keys: int = CACHED_KEYS) -> None:
        self._positive_hash = lru_cache(maxsize=cached_keys)(positive_murmur2)

    def __call__(
        self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
    ) -> int:
        if key is None:
            # Kafka's default for unkeyed records in aiokafka: any available partition.
            return random.choice(available or all_partitions)
        if type(key) is not bytes:  # a bytearray/memoryview is not hashable: hash a copy
            key = bytes(key)
        return all_partitions[self._positive_hash(key) % len(all_partitions)]

    def cache_info(self) -> tuple[int, int, int | None, int]:
        """(hits, misses, maxsize, currsize): for tests and debugging."""
        return tuple(self._positive_hash.cache_info())  # type: ignore[return-value]


_M = 0x5BD1E995


@lru_cache(maxsize=128)
def _words(count: int) -> Callable[[bytes], tuple[int, ...]]:
    return struct.Struct(f"<{count}I").unpack_from  # type: ignore[return-value]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``Utils.murmur2``), the same value as aiokafka's ``murmur2``: the key's
    4-byte words unpacked at once instead of byte by byte, ~2x faster (a 42-byte idempotency
    key: 3.2 us against 6.0; every idempotent request hashes one). Checked against aiokafka's
    in tests/bridge/test_partitioner.py."""
    length = len(data)
    h = 0x9747B28C ^ length
    count = length >> 2
    if count:
        for k in _words(count)(data):
            k = (k * _M) & 0xFFFFFFFF
            k = ((k ^ (k >> 24)) * _M) & 0xFFFFFFFF
            h = ((h * _M) & 0xFFFFFFFF) ^ k
    rest = length & 3
    if rest:
        at = count * 4
        if rest == 3:
            h ^= data[at + 2] << 16
        if rest >= 2:
            h ^= data[at + 1] << 8
        h = ((h ^ data[at]) * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


def positive_murmur2(key: bytes) -> int:
    # The same "toPositive" step as Kafka's Utils.toPositive and aiokafka's DefaultPartitioner.
    return murmur2(key) & 0x7FFFFFFF
