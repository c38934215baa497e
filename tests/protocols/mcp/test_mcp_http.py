"""The MCP front-end over Streamable HTTP, with the SDK's own client against a real bridge on the
embedded broker: tools per token, authorization, validation with JSON pointers, reads by key and
by position, resource subscriptions, and exact resume across a bridge restart."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
from harness import REPO, start_bridge
from kafka_read import read_topic
from mcp_support import (
    GUARD,
    kafka_producer,
    mcp_routes,
    mcp_session,
    result_json,
    token,
)

from bridge.kafka.topic_admin import ensure_topics
from bridge.model.config import KafkaSettings, TopicSpec

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
async def topics(kafka_bootstrap: str) -> dict[str, str]:
    names = {k: f"mcp-{k}-{uuid.uuid4().hex[:8]}" for k in ("odds", "bets", "verified")}
    settings = KafkaSettings(bootstrap="external", request_timeout_ms=5000)
    await ensure_topics(
        settings,
        kafka_bootstrap,
        [
            TopicSpec(names["odds"], 2, 1, True),
            TopicSpec(names["bets"], 1),
            TopicSpec(names["verified"], 1),
        ],
    )
    return names


@pytest.fixture(scope="module")
def routes_text(topics: dict[str, str], bet_schema) -> str:
    return GUARD + mcp_routes(topics["odds"], topics["bets"], topics["verified"], bet_schema)


@pytest.fixture(scope="module")
async def bridge(kafka_bootstrap: str, routes_text: str):
    """One bridge (MCP front-end only) shared by the module's tests."""
    limits = "mcp_rate_per_s = 5\nmcp_burst = 10"  # every identity here stays under it but one
    started = await start_bridge(routes_text, kafka_bootstrap, ["mcp"], http_options=limits)
    yield started
    await started.stop()


def url_of(bridge) -> str:
    return f"http://127.0.0.1:{bridge.web.port}/mcp"


async def tool_names(bridge, bearer: str) -> set[str]:
    async with mcp_session(url_of(bridge), bearer) as session:
        return {tool.name for tool in (await session.list_tools()).tools}


async def test_without_a_token_401_points_at_the_protected_resource_metadata(bridge) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}") as client:
        response = await client.post(
            "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        )
        assert response.status_code == 401
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        metadata_url = challenge.split('resource_metadata="', 1)[1].rstrip('"')
        assert metadata_url.endswith("/.well-known/oauth-protected-resource/mcp")

        bad = await client.post("/mcp", json={}, headers={"authorization": "Bearer not.a.jwt"})
        assert bad.status_code == 401
        assert 'error="invalid_token"' in bad.headers["www-authenticate"]

        metadata = (await client.get(metadata_url)).json()
        assert metadata["resource"] == f"http://127.0.0.1:{bridge.web.port}/mcp"
        assert metadata["authorization_servers"] == ["https://login.example"]
        assert metadata["bearer_methods_supported"] == ["header"]


async def test_tool_lists_differ_by_token(bridge) -> None:
    bettor = await tool_names(bridge, token(bridge.config, "alice", "bettor"))
    engine = await tool_names(bridge, token(bridge.config, "engine-1", "odds-engine"))
    viewer = await tool_names(bridge, token(bridge.config, "val", "viewer"))
    common = {"list_products", "describe_product", "read_odds", "read_latest_odds"}
    assert bettor == common | {"publish_place-bet", "read_my-bets"}
    assert engine == common | {"publish_odds"}
    assert viewer == common


async def test_the_identity_parameter_is_never_the_agents(bridge) -> None:
    async with mcp_session(url_of(bridge), token(bridge.config, "alice", "bettor")) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert "user" not in tools["read_my-bets"].input_schema["properties"]
        # An attempt to read someone else's bets is an unknown argument, not a read.
        result = await session.call_tool("read_my-bets", {"user": "bob"})
        assert result.is_error
        assert result_json(result)["errors"] == [{"pointer": "/user", "detail": "unknown argument"}]
        described = result_json(await session.call_tool("describe_product", {"name": "my-bets"}))
        assert described["parameters"] == []  # {user} is the token's subject, not a parameter
        bet = result_json(await session.call_tool("describe_product", {"name": "place-bet"}))
        assert bet["schema"]["required"] == ["matchId", "team", "amount"]


async def test_a_forbidden_publish_is_a_tool_error_and_produces_nothing(
    bridge, topics, kafka_bootstrap
) -> None:
    from prometheus_client import REGISTRY

    labels = {"kind": "unknown", "route": "", "outcome": "unknown-tool"}
    counted = REGISTRY.get_sample_value("edgebridge_mcp_tool_calls_total", labels) or 0.0
    before = len(await read_topic(kafka_bootstrap, topics["bets"]))
    async with mcp_session(url_of(bridge), token(bridge.config, "val", "viewer")) as session:
        result = await session.call_tool(
            "publish_place-bet", {"matchId": "m1", "team": "home", "amount": 5}
        )
        described = await session.call_tool("describe_product", {"name": "place-bet"})
    assert result.is_error
    assert result_json(result)["error"] == "unknown-tool"
    assert result_json(described)["error"] == "unknown-product"  # forbidden looks like absent
    assert len(await read_topic(kafka_bootstrap, topics["bets"])) == before
    assert REGISTRY.get_sample_value("edgebridge_mcp_tool_calls_total", labels) == counted + 1


async def test_a_bad_argument_names_the_schema_pointers_and_produces_nothing(
    bridge, topics, kafka_bootstrap
) -> None:
    before = len(await read_topic(kafka_bootstrap, topics["bets"]))
    async with mcp_session(url_of(bridge), token(bridge.config, "alice", "bettor")) as session:
        result = await session.call_tool("publish_place-bet", {"matchId": "m1", "amount": -5})
    assert result.is_error
    document = result_json(result)
    assert document["error"] == "invalid-payload"
    assert {e["pointer"] for e in document["errors"]} == {"/amount", "/team"}
    assert "Traceback" not in json.dumps(document)
    assert len(await read_topic(kafka_bootstrap, topics["bets"])) == before


async def test_a_publish_is_validated_keyed_by_identity_and_audited(
    bridge, topics, kafka_bootstrap
) -> None:
    async with mcp_session(url_of(bridge), token(bridge.config, "alice", "bettor")) as session:
        result = await session.call_tool(
            "publish_place-bet", {"matchId": "m1", "team": "away", "amount": 12.5}
        )
    assert not result.is_error, result
    assert result_json(result)["published"] is True
    records = await read_topic(kafka_bootstrap, topics["bets"])
    record = records[-1]
    assert record.key == b"alice"
    assert json.loads(record.value) == {"matchId": "m1", "team": "away", "amount": 12.5}
    headers = dict(record.headers)
    assert b"mcp" in headers.values() and b"alice" in headers.values()


async def test_read_latest_by_key_and_read_since_a_position_exactly(
    bridge, topics, kafka_bootstrap
) -> None:
    match = f"m-{uuid.uuid4().hex[:6]}"
    async with kafka_producer(kafka_bootstrap) as producer:
        for home in range(5):
            await producer.send_and_wait(
                topics["odds"], json.dumps({"home": 1.5 + home}).encode(), key=match.encode()
            )
    bearer = token(bridge.config, "alice", "bettor")
    async with mcp_session(url_of(bridge), bearer) as session:
        _, hub = bridge.kafka
        await (await hub.table(topics["odds"])).sync()  # the table feed has read them all
        latest = result_json(await session.call_tool("read_latest_odds", {"match": match}))
        assert latest["found"] and latest["value"] == {"home": 5.5}

        first = result_json(await session.call_tool("read_odds", {"match": match, "limit": 2}))
        assert [r["value"]["home"] for r in first["records"]] == [1.5, 2.5]
        assert first["more"] is True
        rest = result_json(
            await session.call_tool(
                "read_odds", {"match": match, "position": first["next_position"]}
            )
        )
        assert [r["value"]["home"] for r in rest["records"]] == [3.5, 4.5, 5.5]

        wrong = await session.call_tool(
            "read_odds", {"match": "other", "position": first["next_position"]}
        )
        assert wrong.is_error and result_json(wrong)["errors"][0]["pointer"] == "/position"


async def test_the_rate_limit_is_per_identity_with_a_clear_tool_error(bridge) -> None:
    async with mcp_session(url_of(bridge), token(bridge.config, "greedy", "viewer")) as session:
        results = [await session.call_tool("list_products", {}) for _ in range(30)]
    refused = [result_json(r) for r in results if r.is_error]
    assert refused, "30 calls at once against a burst of 10 at 5/s"
    assert {r["error"] for r in refused} == {"rate-limited"}
    assert "per second" in refused[0]["detail"] and "retry in" in refused[0]["detail"]
    # Another identity has its own allowance.
    async with mcp_session(url_of(bridge), token(bridge.config, "calm", "viewer")) as session:
        assert not (await session.call_tool("list_products", {})).is_error


async def test_a_resource_subscription_is_notified_after_a_produce(
    bridge, topics, kafka_bootstrap
) -> None:
    updated: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            updated.put_nowait(str(root.params.uri))

    bearer = token(bridge.config, "alice", "bettor")
    async with mcp_session(url_of(bridge), bearer, on_message) as session:
        uris = {str(r.uri) for r in (await session.list_resources()).resources}
        assert "edgebridge://products/odds" in uris
        assert "edgebridge://products/place-bet/schema" not in uris  # bettors cannot read bets
        await session.subscribe_resource("edgebridge://products/odds")
        async with kafka_producer(kafka_bootstrap) as producer:
            await producer.send_and_wait(topics["odds"], b'{"home": 2.0}', key=b"sub-1")
        assert await asyncio.wait_for(updated.get(), 10) == "edgebridge://products/odds"


async def test_read_since_a_position_is_exact_across_a_bridge_restart(
    kafka_bootstrap, routes_text, topics
) -> None:
    match = f"r-{uuid.uuid4().hex[:6]}"
    async with kafka_producer(kafka_bootstrap) as producer:
        for n in range(4):
            await producer.send_and_wait(
                topics["odds"], json.dumps({"n": n}).encode(), key=match.encode()
            )
        first = await start_bridge(routes_text, kafka_bootstrap, ["mcp"])
        try:
            bearer = token(first.config, "alice", "bettor")
            async with mcp_session(url_of(first), bearer) as session:
                page = result_json(
                    await session.call_tool("read_odds", {"match": match, "limit": 3})
                )
        finally:
            await first.stop()
        assert [r["value"]["n"] for r in page["records"]] == [0, 1, 2]
        for n in range(4, 6):  # written while no bridge runs
            await producer.send_and_wait(
                topics["odds"], json.dumps({"n": n}).encode(), key=match.encode()
            )
    second = await start_bridge(routes_text, kafka_bootstrap, ["mcp"])
    try:
        async with mcp_session(url_of(second), bearer) as session:
            rest = result_json(
                await session.call_tool(
                    "read_odds", {"match": match, "position": page["next_position"]}
                )
            )
    finally:
        await second.stop()
    assert [r["value"]["n"] for r in rest["records"]] == [3, 4, 5]


async def test_under_workers_each_request_stands_alone_so_any_worker_serves_it(
    kafka_bootstrap: str, routes_text: str
) -> None:
    """``run --workers N`` shares the port between processes; the kernel may hand a session's
    next connection to another worker. Two such bridges here, and a client whose requests
    alternate between them: every call is still served (stateful sessions would be unknown to
    the other bridge)."""
    import httpx2
    from harness import config_text
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    from bridge.model.config import parse_config
    from bridge.process.runtime import Bridge

    config = parse_config(
        config_text(routes_text), REPO / "test-routing.toml", {"KAFKA_BOOTSTRAP": kafka_bootstrap}
    )
    workers = [Bridge(config, frontends=["mcp"], reuse_port=True) for _ in range(2)]
    for worker in workers:
        await worker.start()
    ports = [w.web.port for w in workers]
    served: list[int] = []

    async def alternate(request) -> None:
        port = ports[len(served) % 2]
        served.append(port)
        request.url = request.url.copy_with(port=port)

    try:
        bearer = token(config, "alice", "bettor")
        async with (
            httpx2.AsyncClient(
                headers={"authorization": f"Bearer {bearer}"},
                timeout=30,
                event_hooks={"request": [alternate]},
            ) as http,
            streamable_http_client(f"http://127.0.0.1:{ports[0]}/mcp", http_client=http) as (
                read,
                write,
            ),
            ClientSession(read, write) as session,
        ):
            initialized = await session.initialize()
            for _ in range(3):
                names = {t.name for t in (await session.list_tools()).tools}
                assert "publish_place-bet" in names
                listed = await session.call_tool("list_products", {})
                assert not listed.is_error
            resources = initialized.capabilities.resources
            assert resources is not None and not resources.subscribe  # no stream to notify on
    finally:
        for worker in workers:
            await worker.stop()
    assert set(served) == set(ports)


async def test_duplicate_members_and_nan_are_refused_before_the_sdk_parses_them(
    bridge, topics, kafka_bootstrap
) -> None:
    """JSON-RPC straight over HTTP: the SDK's parser would keep the last of two "amount"
    members (and lets NaN through); the bridge refuses both with the pointer, producing nothing."""
    before = len(await read_topic(kafka_bootstrap, topics["bets"]))
    headers = {
        "authorization": f"Bearer {token(bridge.config, 'alice', 'bettor')}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
    }
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        },
    }
    call = (
        '{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": '
        '"publish_place-bet", "arguments": {"matchId": "m", "team": "home", %s}}}'
    )
    base = f"http://127.0.0.1:{bridge.web.port}"
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        opened = await client.post("/mcp", json=initialize)
        session = {
            "mcp-session-id": opened.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        await client.post(
            "/mcp", headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        for members, detail in (
            ('"amount": 1, "amount": 9000', "more than once"),
            ('"amount": NaN', "NaN"),
        ):
            response = await client.post("/mcp", headers=session, content=call % members)
            assert response.status_code == 400
            error = response.json()["error"]
            assert error["data"]["pointer"] == "/params/arguments/amount"
            assert detail in error["message"]
    assert len(await read_topic(kafka_bootstrap, topics["bets"])) == before


async def test_an_identity_bound_product_notifies_only_of_the_callers_own_records(
    bridge, topics, kafka_bootstrap
) -> None:
    updated: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            updated.put_nowait(str(root.params.uri))

    uri = "edgebridge://products/my-bets"
    async with mcp_session(
        url_of(bridge), token(bridge.config, "alice", "bettor"), on_message
    ) as session:
        await session.subscribe_resource(uri)
        [watch] = [
            w
            for mine in bridge.frontend("mcp").service.watches._by_session.values()
            for w in mine.values()
            if w.uri == uri
        ]
        _, hub = bridge.kafka
        async with kafka_producer(kafka_bootstrap) as producer:
            await producer.send_and_wait(topics["verified"], b'{"bet": 1}', key=b"bob")
            await (await hub.feed(topics["verified"])).sync()  # delivered to every watcher
            assert not watch.pending.is_set() and watch.sent == 0  # bob's bet: no hint to alice
            await producer.send_and_wait(topics["verified"], b'{"bet": 2}', key=b"alice")
        assert await asyncio.wait_for(updated.get(), 10) == uri


async def test_a_client_of_the_2026_protocol_revision_gets_the_same_filtered_tools(bridge) -> None:
    """The SDK's high-level Client negotiates the per-request (2026-07-28) era by default: the
    token still reaches every request, so the tools are still the caller's own."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    bearer = token(bridge.config, "alice", "bettor")
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {bearer}"}) as http:
        transport = streamable_http_client(url_of(bridge), http_client=http)
        async with Client(transport) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            mine = await client.call_tool("read_my-bets", {"limit": 1})
    assert "publish_place-bet" in names and "publish_odds" not in names
    assert not mine.is_error


async def test_subscriptions_listen_of_the_2026_revision_honors_only_readable_products(
    bridge, topics, kafka_bootstrap
) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    odds, bets = "edgebridge://products/odds", "edgebridge://products/place-bet"
    bearer = token(bridge.config, "alice", "bettor")
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {bearer}"}) as http:
        transport = streamable_http_client(url_of(bridge), http_client=http)
        async with (
            Client(transport) as client,
            client.listen(resource_subscriptions=[odds, bets]) as subscription,
        ):
            assert subscription.honored.resource_subscriptions == [odds]  # bets: not hers to read
            async with kafka_producer(kafka_bootstrap) as producer:
                await producer.send_and_wait(topics["odds"], b'{"home": 3.0}', key=b"listen-1")
            event = await asyncio.wait_for(anext(aiter(subscription)), 10)
    assert event.uri == odds


async def test_a_burst_of_records_gives_a_bounded_number_of_notifications(
    bridge, topics, kafka_bootstrap
) -> None:
    """Coalesced: at most one notification per subscription per interval, whatever the burst."""
    import math
    import time

    from protocols.mcp.resources import MIN_INTERVAL_S

    received: list[str] = []

    async def on_message(message) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            received.append(str(root.params.uri))
            arrived.set()

    arrived = asyncio.Event()
    uri, burst = "edgebridge://products/odds", 200
    bearer = token(bridge.config, "burst", "viewer")
    async with mcp_session(url_of(bridge), bearer, on_message) as session:
        await session.subscribe_resource(uri)
        [watch] = [
            w
            for mine in bridge.frontend("mcp").service.watches._by_session.values()
            for w in mine.values()
            if w.uri == uri and w.sent == 0 and not w.pending.is_set()
        ][-1:]
        started = time.monotonic()
        async with kafka_producer(kafka_bootstrap) as producer:
            sent = [
                await producer.send(topics["odds"], b'{"home": 1.1}', key=f"b-{n}".encode())
                for n in range(burst)
            ]
            await producer.flush()
            await asyncio.gather(*sent)
        _, hub = bridge.kafka
        await (await hub.feed(topics["odds"])).sync()  # every record delivered to the watch
        # Sent, plus the last coalesced one still waiting out its interval.
        expected = watch.sent + (1 if watch.pending.is_set() else 0)
        async with asyncio.timeout(10):
            while len(received) < expected:
                arrived.clear()
                await arrived.wait()
        elapsed = time.monotonic() - started
    bound = 1 + math.ceil(elapsed / MIN_INTERVAL_S)
    assert 1 <= len(received) <= bound, (len(received), bound)
    assert len(received) < burst
    assert received == [uri] * len(received)


async def test_a_burst_gives_a_bounded_number_of_listen_notifications_too(
    bridge, topics, kafka_bootstrap
) -> None:
    """subscriptions/listen (2026-07-28) coalesces like resources/subscribe."""
    import math
    import time

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from protocols.mcp.resources import MIN_INTERVAL_S

    odds, burst = "edgebridge://products/odds", 200
    bearer = token(bridge.config, "listener", "viewer")
    events: list[str] = []
    arrived = asyncio.Event()
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {bearer}"}) as http:
        transport = streamable_http_client(url_of(bridge), http_client=http)
        async with (
            Client(transport) as client,
            client.listen(resource_subscriptions=[odds]) as subscription,
        ):

            async def collect() -> None:
                async for event in subscription:
                    events.append(event.uri)
                    arrived.set()

            collector = asyncio.create_task(collect())
            started = time.monotonic()
            async with kafka_producer(kafka_bootstrap) as producer:
                sent = [
                    await producer.send(topics["odds"], b'{"home": 1.2}', key=f"l-{n}".encode())
                    for n in range(burst)
                ]
                await producer.flush()
                await asyncio.gather(*sent)
            _, hub = bridge.kafka
            await (await hub.feed(topics["odds"])).sync()  # every record delivered
            async with asyncio.timeout(10):
                while not events:
                    arrived.clear()
                    await arrived.wait()
            # Whatever is still coalescing arrives within one more interval.
            await asyncio.sleep(2 * MIN_INTERVAL_S)
            elapsed = time.monotonic() - started
            collector.cancel()
    bound = 1 + math.ceil(elapsed / MIN_INTERVAL_S)
    assert 1 <= len(events) <= bound, (len(events), bound)
    assert len(events) < burst and set(events) == {odds}
