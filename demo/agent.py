"""A small AI-agent stand-in that uses the demo's data products over MCP, with the SDK's client:
it lists the products its token may use, reads the matches, reads the latest odds of one match
and places a bet on the favourite. No LLM: the point is what an agent sees and may do.

    make demo                                                       # in one terminal
    TOKEN=$(.venv/bin/edgebridge token --sub alice --role bettor)
    .venv/bin/python -m demo.agent --url http://127.0.0.1:3000/mcp --token "$TOKEN"

docs/mcp.md has the tools, the security model, and the desktop-host configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

MAX_PAGES = 20


def _document(result: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.content[0].text)
    if result.is_error:
        raise RuntimeError(
            f"{document['error']}: {document['detail']} {document.get('errors', '')}"
        )
    return document


async def run_agent(
    url: str, token: str, stake: float = 5.0, say: Any = print, match_id: str | None = None
) -> dict[str, Any] | None:
    """List products, read the odds of an open match (``match_id``, else the first open one),
    bet on its favourite; the publish result (None if no match is open)."""
    headers = {"authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = {tool.name for tool in (await session.list_tools()).tools}
        products = _document(await session.call_tool("list_products", {}))["products"]
        say(f"{len(products)} products, {len(tools)} tools: {', '.join(sorted(tools))}")

        latest: dict[str, Any] = {}
        arguments: dict[str, Any] = {"limit": 100}
        for _ in range(MAX_PAGES):  # page by position: each page starts where the last ended
            page = _document(await session.call_tool("read_matches", arguments))
            for record in page["records"]:  # oldest first: a match's last record is its state
                if record["value"] is not None:
                    latest[record["key"]] = record["value"]
            if not page["more"]:
                break
            arguments = {"limit": 100, "position": page["next_position"]}
        open_ones = [
            m
            for m in latest.values()
            if m.get("status") in ("SCHEDULED", "LIVE") and match_id in (None, m.get("id"))
        ]
        if not open_ones:
            say("no open match")
            return None
        match = open_ones[0]
        odds = _document(await session.call_tool("read_latest_odds", {"match": match["id"]}))
        prices = (odds.get("value") or {}).get("odds")
        if not prices:
            say(f"{match['id']}: the market is closed")
            return None
        team = "home" if prices["home"] <= prices["away"] else "away"
        say(f"{match['home']} v {match['away']}: odds {prices}; betting {stake} on {team}")
        bet = {
            "userId": _subject(token),
            "matchId": match["id"],
            "team": team,
            "amount": stake,
            "odds": prices[team],
            # A new key per bet: if the answer is lost, the same call again cannot bet twice.
            "idempotency_key": f"agent-{uuid.uuid4()}",
        }
        placed = _document(await session.call_tool("publish_place-bet", bet))
        say(f"placed: partition {placed['partition']} offset {placed['offset']}")
        reply = placed.get("reply")
        if reply is not None:  # the bet processor's answer (request-reply)
            say(f"the book answered {reply['status']}: {json.dumps(reply['value'])}")
        elif "reply_pending" in placed:
            say(f"no answer yet: {placed['reply_pending']}")
        return placed


def _subject(token: str) -> str:
    """The token's subject, the user the bet is for (the bridge keys the record by it anyway)."""
    import jwt

    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000/mcp")
    parser.add_argument("--token", default=os.environ.get("EDGEBRIDGE_TOKEN"))
    parser.add_argument("--stake", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not args.token:
        print("a token is required: --token or $EDGEBRIDGE_TOKEN", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_agent(args.url, args.token, args.stake))
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
