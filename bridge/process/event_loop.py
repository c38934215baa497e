"""Which asyncio event loop a bridge process runs on: uvloop when it is installed.

The bridge spends much of its CPU in the event loop itself (socket writes, callbacks, futures)
for every HTTP request, MQTT packet and Kafka response; uvloop (libuv, Cython) does that work
several times cheaper than the pure-Python selector loop. ``EDGEBRIDGE_EVENT_LOOP=asyncio``
forces the standard loop (to compare, or to rule uvloop out when chasing a bug).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bridge.process import gc_tuning

LOOP_ENV = "EDGEBRIDGE_EVENT_LOOP"
T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's default (not installed, or not wanted)."""
    if os.environ.get(LOOP_ENV, "uvloop").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop, the garbage collector tuned for serving."""
    gc_tuning.tune_for_serving()
    factory = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
