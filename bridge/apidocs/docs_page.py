"""The human-readable API page (``/docs``), rendered from the AsyncAPI and OpenAPI documents.

Self-contained HTML (no script, no CDN): it must work on an offline laptop and behind a strict
Content-Security-Policy. Pure function: ``docs_html(asyncapi, openapi) -> str``.
"""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

_CODE = re.compile(r"`([^`]+)`")
_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7fb}
main{max-width:1100px;margin:auto;padding:1rem}
h1{font-size:1.5rem}h2{margin-top:2rem;border-bottom:1px solid #ccd;padding-bottom:.2rem}
table{border-collapse:collapse;width:100%;background:#fff;font-size:14px}
td,th{border:1px solid #dde;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#eef}code{font:13px ui-monospace,monospace;background:#eef;padding:0 .2rem}
pre{background:#fff;border:1px solid #dde;padding:.5rem;overflow:auto;font-size:12px}
.tag{display:inline-block;border-radius:3px;padding:0 .4rem;font-size:12px;color:#fff}
.mqtt{background:#7a4cc2}.sse{background:#0a7d5a}.http{background:#1f62c4}.kafka{background:#333}
.mcp{background:#b5651d}.grpc{background:#2b8a9e}.label{background:#667}
.receive{color:#1f62c4}.send{color:#0a7d5a}
@media (max-width:640px){td,th{font-size:12px;padding:.2rem}}
"""


def docs_html(
    asyncapi: dict[str, Any], openapi: dict[str, Any], live: dict[str, Any] | None = None
) -> str:
    """The page; ``live`` (a GET /catalog document) adds each product's health to the catalog."""
    info = asyncapi["info"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>{escape(info['title'])} API</title><style>{_STYLE}</style></head><body><main>",
        f"<h1>{escape(info['title'])}</h1>",
        f"<p>{_prose(info['description'])}</p>",
        '<p>Machine-readable: <a href="/asyncapi.json">/asyncapi.json</a> (AsyncAPI '
        f'{escape(asyncapi["asyncapi"])}) and <a href="/openapi.json">/openapi.json</a> '
        f"(OpenAPI {escape(openapi['openapi'])}).</p>",
        _catalog(asyncapi, live),
        _servers(asyncapi),
        _operations(asyncapi),
        _http_paths(openapi),
        _messages(asyncapi),
        "</main></body></html>",
    ]
    return "\n".join(parts)


def _catalog(doc: dict[str, Any], live: dict[str, Any] | None = None) -> str:
    """The data products (``x-edgebridge-catalog``): what each is, who owns it, every address
    that reaches it; with ``live`` (the page asked for by someone who may read ``/catalog``)
    each product's health at the time of the request. No script: the page is rendered again
    on each request, so a reload shows the figures moving."""
    health = {p["name"]: p.get("health", {}) for p in (live or {}).get("products", [])}
    rows = []
    for product in doc.get("x-edgebridge-catalog", []):
        name = escape(product["name"])
        addresses = "<br>".join(
            f"{_tag(protocol)} " + ", ".join(f"<code>{escape(a)}</code>" for a in items)
            for protocol, items in product["addresses"].items()
        )
        access = product["access"]
        roles = (
            f"read: {escape(', '.join(access['subscribe']) or '-')}<br>"
            f"write: {escape(', '.join(access['publish']) or '-')}"
        )
        where = product.get("jurisdiction")
        regions = (
            "anywhere"
            if where is None
            else f"read: {escape(', '.join(where['read']))}<br>"
            f"publish: {escape(', '.join(where['publish']))}"
        )
        tags = " ".join(f"<span class='tag label'>{escape(t)}</span>" for t in product["tags"])
        cells = (
            f"<td><b>{name}</b><br>"
            f"<span class=version>{escape(product.get('version') or '')}</span></td>"
            f"<td>{_prose(product.get('description') or '')}<br>{tags}</td>"
            f"<td class=owner>{escape(product.get('owner') or '-')}</td>"
            f"<td><code>{escape(product['topic'])}</code></td>"
            f"<td>{addresses}</td><td>{roles}</td><td>{regions}</td>"
        )
        if live is not None:
            cells += f"<td class=health>{_health(health.get(product['name'], {}))}</td>"
        rows.append(f"<tr id=product-{name} data-product={name}>{cells}</tr>")
    if not rows:
        return ""
    if live is None:
        note = (
            "Live health (last record, records/s, subscribers, dead letters, consumer lag): "
            "<code>GET /catalog</code> with a token, <code>edgebridge catalog --url</code>, or "
            "this page as <code>/docs?access_token=…</code> for a token that may read it."
        )
    else:
        note = (
            f"Live health as of <time>{escape(str(live.get('generated_at')))}</time> "
            f"(records/s over the last {escape(str(live.get('window_s')))} s; figures of this "
            "instance): reload to refresh."
        )
    return (
        f"<h2 id=catalog>Data products</h2><p>Every route is a data product. {note}</p>"
        "<table class=catalog><tr><th>product</th><th>what it is</th><th>owner</th>"
        "<th>Kafka topic</th><th>addresses</th><th>access</th><th>regions</th>"
        + ("<th>health</th>" if live is not None else "")
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _health(health: dict[str, Any]) -> str:
    if health.get("status") == "unavailable":
        return "<b class=status>unavailable</b>"
    age = health.get("last_record_age_s")
    last = "never" if age is None else f"{age:.1f} s ago"
    return (
        f"<b class=status>{escape(str(health.get('status')))}</b><br>"
        f"last record: <span class=last-record>{escape(last)}</span><br>"
        f"<span class=rate>{health.get('records_per_s', 0):.2f}</span> records/s<br>"
        f"<span class=subscribers>{health.get('subscribers', 0)}</span> subscribers<br>"
        f"<span class=refused>{health.get('refused', 0)}</span> refused, "
        f"<span class=dead-letters>{health.get('dead_letters', 0)}</span> dead letters<br>"
        f"lag <span class=lag>{escape(str(health.get('consumer_lag', '-')))}</span>"
    )


def _servers(doc: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_tag(name)}</td><td><code>{escape(s['protocol'])}://{escape(s['host'])}"
        f"</code></td><td>{escape(s.get('description', ''))}</td></tr>"
        for name, s in doc["servers"].items()
    )
    return f"<h2>Servers</h2><table><tr><th>server</th><th>address</th><th></th></tr>{rows}</table>"


def _operations(doc: dict[str, Any]) -> str:
    rows = []
    for name, op in doc["operations"].items():
        channel = _resolve(doc, op["channel"]["$ref"])
        server = channel["servers"][0]["$ref"].rsplit("/", 1)[-1]
        kind = channel.get("x-edgebridge-transport", server)
        message = op["messages"][0]["$ref"].rsplit("/", 1)[-1]
        peer = "Kafka" if kind == "kafka" else "client"
        inbound = op["action"] == "receive"
        direction = f"{peer} → bridge" if inbound else f"bridge → {peer}"
        rows.append(
            f"<tr id=op-{escape(name)}><td>{_tag(kind)}</td>"
            f"<td><code>{escape(str(channel['address']))}</code></td>"
            f"<td class={op['action']}>{direction}</td>"
            f"<td><a href=#msg-{escape(message)}>{escape(message)}</a></td>"
            f"<td>{_prose(op.get('description', ''))}</td></tr>"
        )
    return (
        "<h2>Channels and operations</h2><table><tr><th>protocol</th><th>address</th>"
        "<th>direction</th><th>message</th><th>what happens</th></tr>" + "".join(rows) + "</table>"
    )


def _http_paths(doc: dict[str, Any]) -> str:
    rows = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            headers = [p["name"] for p in op.get("parameters", []) if p["in"] == "header"]
            statuses = ", ".join(op["responses"])
            rows.append(
                f"<tr><td>{escape(method.upper())}</td><td><code>{escape(path)}</code></td>"
                f"<td>{escape(op.get('summary', ''))}</td><td>{escape(', '.join(headers))}</td>"
                f"<td>{escape(statuses)}</td></tr>"
            )
    return (
        "<h2>HTTP and event-stream paths</h2><table><tr><th>method</th><th>path</th><th></th>"
        "<th>headers</th><th>responses</th></tr>" + "".join(rows) + "</table>"
    )


def _messages(doc: dict[str, Any]) -> str:
    blocks = []
    for name, message in doc["components"]["messages"].items():
        payload = message.get("payload", {})
        if "$ref" in payload:
            payload = _resolve(doc, payload["$ref"])
        kafka = message.get("bindings", {}).get("kafka", {})
        key = kafka.get("key", {}).get("x-edgebridge-template", "-")
        headers = ", ".join(message.get("headers", {}).get("properties", {})) or "-"
        blocks.append(
            f"<h3 id=msg-{escape(name)}>{escape(name)}</h3>"
            f"<p>{_tag('kafka')} key <code>{escape(key)}</code>; headers <code>"
            f"{escape(headers)}</code>; content type <code>"
            f"{escape(message.get('contentType', ''))}</code></p>"
            f"<pre>{escape(json.dumps(payload, indent=2))}</pre>"
        )
    return "<h2>Messages</h2>" + "".join(blocks)


def _prose(text: str) -> str:
    """Escaped text with `code` spans rendered."""
    return _CODE.sub(r"<code>\1</code>", escape(text))


def _tag(kind: str) -> str:
    return f"<span class='tag {escape(kind)}'>{escape(kind)}</span>"


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
