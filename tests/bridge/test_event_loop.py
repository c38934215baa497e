"""The bridge process's event loop: uvloop when installed, the standard one on request."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from bridge.process import event_loop


async def _loop_type() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_runs_on_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.LOOP_ENV, raising=False)
    assert event_loop.run(_loop_type()) is uvloop.Loop


def test_standard_loop_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.LOOP_ENV, "asyncio")
    assert not issubclass(event_loop.run(_loop_type()), uvloop.Loop)
