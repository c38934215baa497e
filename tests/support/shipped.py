"""The shipped routing.toml for a test: every topic (and reply and dead-letter topic) with a
suffix of the test's own, so tests sharing a broker never read each other's records, and the
listeners the test asks for."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from harness import REPO

from bridge.model.config import Config, parse_config


def shipped_config(bootstrap: str, suffix: str, **listeners: Any) -> Config:
    """``listeners``: Config fields to replace (``http_listener=ListenerSettings(...)``,
    ``mqtt_listener=None``...); the admin listener is off unless given."""
    text = (REPO / "routing.toml").read_text()
    name = r'"([A-Za-z0-9._-]+)"'
    text = re.sub(rf"^(reply_)?topic = {name}", rf'\1topic = "\2-{suffix}"', text, flags=re.M)
    text = re.sub(rf"^dead_letter = {name}", rf'dead_letter = "\1-{suffix}"', text, flags=re.M)
    text = re.sub(
        r"^\[kafka\.topics\.([A-Za-z0-9._-]+)\]", rf"[kafka.topics.\1-{suffix}]", text, flags=re.M
    )
    config = parse_config(text, REPO / "routing.toml", {"KAFKA_BOOTSTRAP": bootstrap})
    return dataclasses.replace(config, **{"admin_listener": None, **listeners})
