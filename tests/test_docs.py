"""The docs a newcomer follows stay true to the code (no broker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def schema_fields() -> list[str]:
    schema = json.loads((REPO / "bridge/model/config.schema.json").read_text())
    defs = schema["$defs"]
    found: list[str] = []

    def walk(node: dict[str, Any], prefix: str, seen: tuple[str, ...]) -> None:
        if "$ref" in node:
            name = node["$ref"].split("/")[-1]
            if name not in seen:
                walk(defs[name], prefix, (*seen, name))
            return
        for part in node.get("allOf", []) + node.get("oneOf", []) + node.get("anyOf", []):
            walk(part, prefix, seen)
        for key, value in node.get("properties", {}).items():
            full = f"{prefix}.{key}" if prefix else key
            if full not in found:
                found.append(full)
            walk(value, full, seen)
            if isinstance(value.get("items"), dict):
                walk(value["items"], full + "[]", seen)

    walk(schema, "", ())
    return found


def test_routing_md_explains_every_field_of_the_schema() -> None:
    text = (REPO / "docs/routing.md").read_text()
    missing = [field for field in schema_fields() if f"`{field}`" not in text]
    assert not missing, f"docs/routing.md lacks: {missing}"


def test_routing_md_shows_the_shipped_file_as_it_is() -> None:
    text = (REPO / "docs/routing.md").read_text()
    assert (REPO / "routing.toml").read_text().strip() in text


def test_the_readme_says_which_port_serves_what() -> None:
    readme = (REPO / "README.md").read_text()
    for port in ("3000", "8080", "1883", "9090"):
        assert f"| {port} |" in readme, port
