"""What the catalog's live figures cost on the hub's hot path: ``TopicActivity.note`` per record,
printed beside a baseline measured in the same run (``RecordCache.append``, which the hub's
``_dispatch`` already pays for every record), and what a read (``per_second``) costs.

    .venv/bin/python bench/catalog_activity.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import time
import timeit

from bridge.kafka.record_cache import RecordCache
from bridge.model.message import Message
from bridge.telemetry.activity import TopicActivity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.records
    activity = TopicActivity()
    now_ms = int(time.time() * 1000)
    note = min(timeit.repeat(lambda: activity.note(now_ms), number=n, repeat=5)) / n
    cache = RecordCache(10_000)
    records = iter([Message("t", b"k", b"v", (), partition=0, offset=i) for i in range(n)])
    append = min(timeit.repeat(lambda: cache.append(next(records)), number=n // 5, repeat=5))
    append /= n // 5
    empty = min(timeit.repeat(lambda: None, number=n, repeat=5)) / n
    read = min(timeit.repeat(activity.per_second, number=10_000, repeat=5)) / 10_000
    print(f"note_ns_per_record: {(note - empty) * 1e9:.0f}")
    print(f"baseline_record_cache_append_ns: {(append - empty) * 1e9:.0f}")
    print(f"note_to_baseline_ratio: {(note - empty) / (append - empty):.2f}")
    print(f"per_second_read_us: {read * 1e6:.1f}")


if __name__ == "__main__":
    main()
