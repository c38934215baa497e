"""demo/agent.py against a bridge running the shipped routing.toml (its own topic names, loopback
listener on a free port, MCP front-end only) and the demo's bet processor: it lists products,
reads a match's odds and places a bet (with an idempotency key) that lands in Kafka keyed by the
token's subject and is answered by the bet processor through the reply topic."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from aiokafka import AIOKafkaProducer
from shipped import shipped_config as shipped

from bridge.edge.tokens import mint_token
from bridge.model.config import Config, ListenerSettings
from bridge.process.runtime import Bridge
from demo.agent import run_agent
from demo.bet_processor import BetProcessor, Topics


def shipped_config(bootstrap: str, suffix: str) -> Config:
    """The shipped routing.toml on topics of its own, with only the HTTP listener (free port)."""
    return shipped(
        bootstrap, suffix, mqtt_listener=None, http_listener=ListenerSettings("127.0.0.1", 0)
    )


async def test_the_agent_reads_odds_and_places_a_bet(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    config = shipped_config(kafka_bootstrap, suffix)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    bridge = Bridge(config, frontends=["mcp"])
    await bridge.start()
    await producer.start()
    topics = Topics(
        f"bets-{suffix}",
        f"matches-{suffix}",
        f"bets-verified-{suffix}",
        f"user-profiles-{suffix}",
        f"bet-processor-{suffix}",
    )
    stop = asyncio.Event()
    processor = asyncio.create_task(BetProcessor(kafka_bootstrap, topics, ["alice"]).run(stop))
    try:
        match = {
            "id": "m-agent",
            "home": "Lions",
            "away": "Owls",
            "status": "LIVE",
            "odds": {"home": 2.4, "away": 1.6},
            "oddsAt": time.time(),
        }
        odds = {"match": "m-agent", "odds": {"home": 2.4, "away": 1.6}, "minute": 10}
        await producer.send_and_wait(
            f"matches-{suffix}", json.dumps(match).encode(), key=b"m-agent"
        )
        await producer.send_and_wait(f"odds-{suffix}", json.dumps(odds).encode(), key=b"m-agent")
        _, hub = bridge.kafka
        await (await hub.table(f"odds-{suffix}")).sync()
        assert bridge.web is not None
        bearer = mint_token(config.guard_settings, "alice", ["bettor"])  # type: ignore[arg-type]
        said: list[str] = []
        placed = await run_agent(
            f"http://127.0.0.1:{bridge.web.port}/mcp", bearer, 5.0, said.append, "m-agent"
        )
    finally:
        stop.set()
        await asyncio.wait_for(processor, 30)
        await producer.stop()
        await bridge.stop()
    assert placed is not None and placed["product"] == "place-bet"
    assert "publish_place-bet" in said[0]
    assert any("betting 5.0 on away" in line for line in said)
    assert placed["reply"]["status"] == 201, placed  # the bet processor accepted it
    assert placed["reply"]["value"]["potentialWinnings"] == 8.0
    from kafka_read import read_topic

    [bet] = await read_topic(kafka_bootstrap, f"bets-{suffix}")
    assert bet.key == b"alice"
    assert json.loads(bet.value) == {
        "userId": "alice",
        "matchId": "m-agent",
        "team": "away",
        "amount": 5.0,
        "odds": 1.6,
    }
