"""Fixtures of the MCP front-end tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp_support import BET_SCHEMA


@pytest.fixture(scope="module")
def bet_schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "bet.json"
    path.write_text(json.dumps(BET_SCHEMA))
    return path
