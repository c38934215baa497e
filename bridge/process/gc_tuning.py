"""The garbage collector's pace in a bridge process: fewer, cheaper collections.

CPython runs a young-generation collection every 700 net allocations, and every tenth of those
also sweeps the middle generation; a bridge in flight holds tens of thousands of young objects
(packets, records, futures), each swept again at every collection. Measured on MQTT ingest
(`bench/mqtt.py`, py-spy and ``gc.callbacks``): 13-15 % of the bridge's CPU was collection, 18
full collections in 80k publishes. A 10,000-allocation threshold brings that to ~3 %, with one
full collection; reference cycles are still collected, a little later.

``gc.freeze()`` moves what exists at start-up (modules, configuration, routes) out of every
later collection: the full ones then only walk what the bridge made since.
``EDGEBRIDGE_GC=default`` keeps CPython's settings (to compare, or to rule this out).
"""

from __future__ import annotations

import gc
import os

GC_ENV = "EDGEBRIDGE_GC"
YOUNG_THRESHOLD = 10_000  # CPython's default: 700


def tune_for_serving() -> None:
    """Raise the young generation's threshold and freeze what start-up made (see above)."""
    if os.environ.get(GC_ENV, "tuned").lower() == "default":
        return
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.freeze()
