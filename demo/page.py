"""The demo web page, served by the bridge's own HTTP listener (same origin as its streams).

Static files from ``demo/web`` (no build step) plus ``/app/config.json``: the demo user and a
bettor token minted for it. Mounted on the listener, so it costs the bridge nothing else.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Mapping
from importlib import resources
from typing import Any

INDEX = "index.html"
ASSETS = "/app/"
CONFIG = "/app/config.json"
FAVICON = "/favicon.ico"


class DemoPage:
    """An ASGI handler for ``/`` and ``/app/*``; ``settings`` becomes ``/app/config.json``."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        web = resources.files("demo").joinpath("web")
        self.files: dict[str, tuple[bytes, bytes]] = {}
        for entry in web.iterdir():
            if entry.is_file():
                kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                if kind.startswith("text/") or kind.endswith("javascript"):
                    kind += "; charset=utf-8"
                self.files[ASSETS + entry.name] = (kind.encode(), entry.read_bytes())
        self.files["/"] = self.files[ASSETS + INDEX]
        self.files[FAVICON] = self.files[ASSETS + "favicon.svg"]  # for browsers that ask anyway
        self.files[CONFIG] = (b"application/json", json.dumps(dict(settings)).encode())

    @staticmethod
    def paths() -> tuple[str, ...]:
        """What the page answers, for the listener's dispatch table."""
        return ("/", FAVICON, ASSETS + "{file...}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        found = self.files.get(scope["path"])
        status, (kind, body) = (200, found) if found else (404, (b"text/plain", b"not found\n"))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", kind),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""}
        )
