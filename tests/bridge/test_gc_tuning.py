"""Every bridge process runs with the collector tuned (bridge/process/gc_tuning.py), unless told not to.

Checked in a fresh interpreter going through ``event_loop.run``, the way ``edgebridge run`` and
its workers start, so this test process keeps CPython's own settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.process import gc_tuning

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import gc, json
from bridge.process import event_loop

async def main():
    return {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}

print(json.dumps(event_loop.run(main())))
"""


def gc_inside_run(**env: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)


def test_a_bridge_process_collects_young_objects_less_often_and_freezes_start_up() -> None:
    seen = gc_inside_run()
    assert seen["threshold"][0] == gc_tuning.YOUNG_THRESHOLD
    assert seen["frozen"] > 1000  # the modules and objects start-up made


@pytest.mark.parametrize("value", ["default", "DEFAULT"])
def test_edgebridge_gc_default_keeps_cpythons_settings(value: str) -> None:
    seen = gc_inside_run(EDGEBRIDGE_GC=value)
    assert seen["threshold"][0] == 700
    assert seen["frozen"] == 0
