"""Live figures of the data-product catalog (issue 16 item 4): cheap to count, computed on read.

:class:`TopicActivity` is fed once per record a hub feed reads (``note``: a few integer
operations, no clock read, no allocation) and answers "when was the last record" and "how many
records per second over the last minute" when the catalog asks. Records are placed in one-second
buckets by their **Kafka timestamp**, not by when this process read them, so a feed that reads a
compacted topic from its start does not count a year of history as the last minute's traffic.

:data:`REFUSED` and :data:`DEAD_LETTERED` count refused payloads per route name (the Prometheus
counters count the same, but reading a prometheus-client value back is private API and, with
``--workers``, a file per process).
"""

from __future__ import annotations

import time
from collections import Counter

WINDOW_S = 60


class TopicActivity:
    """Records of one topic per second of Kafka timestamp, over the last :data:`WINDOW_S`."""

    __slots__ = ("_counts", "_seconds", "last_ms", "total")

    def __init__(self) -> None:
        self._seconds = [-1] * WINDOW_S  # which second each bucket holds now
        self._counts = [0] * WINDOW_S
        self.last_ms: int | None = None  # the newest record's Kafka timestamp
        self.total = 0  # records read since this feed started

    def note(self, timestamp_ms: int | None) -> None:
        """One record read (hot path: called by the hub for every record of the topic)."""
        self.total += 1
        if timestamp_ms is None or timestamp_ms < 0:
            return  # a record without a timestamp (old message format) moves only the total
        if self.last_ms is None or timestamp_ms > self.last_ms:
            self.last_ms = timestamp_ms
        second = timestamp_ms // 1000
        slot = second % WINDOW_S
        held = self._seconds[slot]
        if held == second:
            self._counts[slot] += 1
        elif second > held:
            # The bucket held a second at least a minute older: reuse it.
            self._seconds[slot] = second
            self._counts[slot] = 1
        # else: older than what the bucket holds, so older than the window: not counted.

    def per_second(self, now: float | None = None) -> float:
        """Records per second over the last :data:`WINDOW_S` seconds before ``now``."""
        current = int(now if now is not None else time.time())
        first = current - WINDOW_S + 1
        records = sum(
            count
            for second, count in zip(self._seconds, self._counts, strict=True)
            if first <= second <= current
        )
        return records / WINDOW_S


REFUSED: Counter[str] = Counter()  # route name -> payloads refused (schema, unroutable...)
DEAD_LETTERED: Counter[str] = Counter()  # route name -> refused payloads kept in its DLQ topic
