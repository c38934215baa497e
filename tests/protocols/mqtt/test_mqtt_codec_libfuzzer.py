"""A short coverage-guided fuzz run of the MQTT codec in every test run (the long run is
`fuzz/mqtt_codec.py -runs=1000000`, see docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_codec_survives_coverage_guided_fuzzing(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "fuzz" / "mqtt_codec.py"),
            "-runs=20000",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done 20000 runs" in result.stderr
