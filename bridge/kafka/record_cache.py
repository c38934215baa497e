"""A bounded in-memory window of the most recent records of one topic.

For each partition it knows the offset from which it is *complete* (``start``): every record at
or after ``start`` that the feed has read is in the cache. A reader positioned at or after
``start`` can therefore be served from memory; an older one must read Kafka first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping

from bridge.model.message import Message


class RecordCache:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._partitions: dict[int, deque[Message]] = {}
        self._start: dict[int, int] = {}
        self._size = 0

    def reset(self, partition: int, start: int) -> None:
        """Begin (or restart) caching ``partition`` from offset ``start``."""
        dropped = self._partitions.pop(partition, deque())
        self._size -= len(dropped)
        self._partitions[partition] = deque()
        self._start[partition] = start

    def start(self, partition: int) -> int | None:
        return self._start.get(partition)

    def append(self, record: Message) -> None:
        assert record.partition is not None and record.offset is not None
        if self.limit <= 0:
            self._start[record.partition] = record.offset + 1
            return
        self._partitions.setdefault(record.partition, deque()).append(record)
        self._size += 1
        while self._size > self.limit:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        # Evict from the partition whose oldest record is oldest in time, keeping the window fair.
        partition = min(
            (p for p, records in self._partitions.items() if records),
            key=lambda p: self._partitions[p][0].timestamp_ms or 0,
        )
        record = self._partitions[partition].popleft()
        self._size -= 1
        assert record.offset is not None
        self._start[partition] = record.offset + 1

    def covers(self, position: Mapping[int, int]) -> bool:
        """Can every record after ``position`` be served from here?"""
        for partition, start in self._start.items():
            if position.get(partition, 0) < start:
                return False
        return True

    def records_after(self, position: Mapping[int, int]) -> Iterator[Message]:
        for partition, records in self._partitions.items():
            offset = position.get(partition, 0)
            for record in records:
                if record.offset is not None and record.offset >= offset:
                    yield record

    def __len__(self) -> int:
        return self._size
