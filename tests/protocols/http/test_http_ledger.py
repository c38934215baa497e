"""The idempotency ledger scaled out (issue 14, item 3): two bridge processes share the ledger's
partitions through a consumer group, each holds only its share, and a request whose key the
other owns is forwarded to it. Real processes, the real broker, httpx, a plain consumer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
import pytest
from harness import BridgeProcess, config_text, free_port

from bridge.kafka.partitioner import positive_murmur2
from protocols.http.idempotency import DEFAULT_PARTITIONS, scope_key

pytestmark = pytest.mark.broker

BET = {"userId": "u9", "matchId": "m9", "team": "away", "amount": 7}


class Instance:
    """One `edgebridge run` process with its HTTP and admin ports."""

    def __init__(self, config: Path, bootstrap: str, port: int, admin: int) -> None:
        self.process = BridgeProcess(config, bootstrap)
        self.port = port
        self.admin = admin
        self.url = f"http://127.0.0.1:{port}"

    async def start(self) -> Instance:
        self.process = BridgeProcess(self.process.config_file, self.process.bootstrap)
        await self.process.astart(wait_port=self.port)
        return self

    def owned(self) -> set[int]:
        """The partitions of the newest assignment each worker of this process logged."""
        by_worker: dict[str, set[int]] = {}
        for line in self.process.logs().splitlines():
            if '"owned.assigned"' in line:
                event = json.loads(line)
                by_worker[event["address"]] = set(event["partitions"])
        return set().union(*by_worker.values()) if by_worker else set()

    def kill(self) -> None:
        """SIGKILL the supervisor and its workers at once: no worker may finish anything."""
        assert self.process.proc is not None
        if self.process.proc.poll() is not None:
            return
        parent = psutil.Process(self.process.proc.pid)
        for proc in [*parent.children(recursive=True), parent]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        self.process.proc.wait()

    async def gauge(self, name: str) -> float:
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"http://127.0.0.1:{self.admin}/metrics")).text
        found = re.search(rf'^{name}{{topic="edgebridge.ledger"}} (\S+)$', text, re.M)
        assert found is not None, f"{name} not exported"
        return float(found.group(1))


@pytest.fixture
async def pair(
    kafka_bootstrap, topics, schema_file, tmp_path, http_routes
) -> AsyncIterator[Callable[[], list[Instance]]]:
    routes = http_routes(topics["bets"], topics["replies"], topics["table"], schema_file)
    instances: list[Instance] = []
    try:  # a started instance left running would keep a share of the ledger for later tests
        for name in ("a", "b"):
            instances.append(
                await started_on_free_ports(tmp_path / f"{name}.toml", routes, kafka_bootstrap)
            )
        await settled(instances)
        yield lambda: instances
    finally:
        for instance in instances:
            instance.kill()


async def started_on_free_ports(config: Path, routes: str, bootstrap: str) -> Instance:
    """An instance on ports free a moment ago; another process may take one first (a Kafka
    client's ephemeral source port), so a bind failure is retried on new ports."""
    for attempt in range(3):
        port, admin = free_port(), free_port()
        extra = f'\n[listeners.admin]\nhost = "127.0.0.1"\nport = {admin}\n'
        config.write_text(config_text(routes, http_port=port, extra=extra))  # noqa: ASYNC240
        instance = Instance(config, bootstrap, port, admin)
        try:
            return await instance.start()
        except TimeoutError as exc:
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


async def settled(instances: list[Instance], timeout: float = 30) -> None:
    """Until the live instances' newest assignments split every partition between them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        shares = [i.owned() for i in instances]
        if all(shares) and set().union(*shares) == set(range(DEFAULT_PARTITIONS)):
            if sum(len(s) for s in shares) == DEFAULT_PARTITIONS:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"partitions never split: {[i.owned() for i in instances]}")


def key_owned_by(owner: Instance) -> str:
    """An Idempotency-Key of the bet route (anonymous caller) whose ledger partition ``owner``
    holds."""
    owned = owner.owned()
    while True:
        key = uuid.uuid4().hex
        if positive_murmur2(scope_key("bet", None, key)) % DEFAULT_PARTITIONS in owned:
            return key


async def until_answered(client: httpx.AsyncClient, path: str, **kwargs) -> httpx.Response:
    """POST until the answer is neither 409 nor 503 (ownership moving, recovery under way)."""
    for _ in range(600):
        response = await client.post(path, **kwargs)
        if response.status_code not in (409, 503):
            return response
        assert response.headers["retry-after"]
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {response.status_code}: {response.text}")


async def test_each_instance_holds_its_share_and_forwards_the_rest(pair, topics, read_all) -> None:
    a, b = pair()
    assert not a.owned() & b.owned()
    keys = [key_owned_by(b) for _ in range(5)] + [key_owned_by(a) for _ in range(5)]
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as on_a:
        async with httpx.AsyncClient(base_url=b.url, timeout=30) as on_b:
            firsts = []
            for key in keys:  # all sent to A: half are decided by B
                headers = {"idempotency-key": key, "prefer": "respond-async"}
                first = await on_a.post("/bets", json=BET, headers=headers)
                assert first.status_code == 202, first.text
                assert "idempotent-replayed" not in first.headers
                firsts.append(first)
            for key, first in zip(keys, firsts, strict=True):
                headers = {"idempotency-key": key, "prefer": "respond-async"}
                for client in (on_a, on_b):
                    again = await client.post("/bets", json=BET, headers=headers)
                    assert again.status_code == 202
                    assert again.headers["idempotent-replayed"] == "true"
                    assert again.content == first.content
                other = await on_b.post("/bets", json={**BET, "amount": 8}, headers=headers)
                assert other.status_code == 422
                assert other.headers["content-type"] == "application/problem+json"
    records = await read_all(topics["bets"])
    assert len(records) == len(keys)  # one record per key, whichever instance was asked
    # Each holds only its share of the ledger (the session's other tests' keys included),
    # as its /metrics says (refreshed every few seconds).
    for _ in range(100):
        partitions = [await i.gauge("edgebridge_owned_table_partitions") for i in (a, b)]
        held = [await i.gauge("edgebridge_owned_table_keys") for i in (a, b)]
        if partitions == [len(a.owned()), len(b.owned())] and min(held) >= 5:
            break
        await asyncio.sleep(0.2)
    assert partitions == [len(a.owned()), len(b.owned())]
    assert min(held) >= 5 and all(h < sum(held) for h in held)


async def test_a_retry_on_the_other_instance_while_in_flight_is_409(pair, topics, read_all) -> None:
    a, b = pair()
    key = key_owned_by(b)
    headers = {"idempotency-key": key}
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=30) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=30) as on_b,
    ):
        # The first waits for a reply that never comes (up to 5 s) on B, the owner. Its record
        # is produced after its claim, so once the record is in Kafka the key is in flight (a
        # fixed sleep here was too short on a loaded machine).
        first = asyncio.create_task(
            on_b.post("/bets", json=BET, headers={**headers, "prefer": "wait=5"})
        )
        for _ in range(100):
            if await read_all(topics["bets"]):
                break
            await asyncio.sleep(0.05)
        retry = await on_a.post("/bets", json=BET, headers=headers)
        assert retry.status_code == 409
        assert retry.headers["retry-after"]
        assert (await first).status_code == 202
    assert len(await read_all(topics["bets"])) == 1


async def test_owner_sigkilled_mid_request_then_retry_elsewhere_never_produces_twice(
    pair, topics, read_all
) -> None:
    a, b = pair()
    key = key_owned_by(b)
    headers = {"idempotency-key": key, "prefer": "wait=10"}
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as on_b:
        # B claims and produces, then waits for a reply: killed in the middle, before it could
        # store a completion.
        first = asyncio.create_task(on_b.post("/bets", json=BET, headers=headers))
        for _ in range(200):
            if await read_all(topics["bets"]):
                break
            await asyncio.sleep(0.05)
        b.kill()
        with pytest.raises(httpx.HTTPError):
            await first
    assert len(await read_all(topics["bets"])) == 1
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as on_a:
        # Until the group moves B's partitions to A: 503 (owner unreachable), then 409 while A
        # searches the topic for the claimed record; then the rebuilt answer.
        retry = await until_answered(on_a, "/bets", json=BET, headers=headers)
        assert retry.status_code == 202, retry.text
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.json()["location"]
        polled = await on_a.get(retry.json()["location"])
        assert polled.status_code == 202  # the reply location of the dead instance works here
    assert len(await read_all(topics["bets"])) == 1
    assert a.owned() == set(range(DEFAULT_PARTITIONS))


async def test_restart_of_both_instances_still_replays(pair, topics, read_all) -> None:
    a, b = pair()
    keys = [key_owned_by(a), key_owned_by(b)]
    answers = {}
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as on_a:
        for key in keys:
            headers = {"idempotency-key": key, "prefer": "respond-async"}
            answers[key] = await on_a.post("/bets", json=BET, headers=headers)
            assert answers[key].status_code == 202
    # Give the completions (stored off the critical path) their moment, then kill both.
    await asyncio.sleep(0.5)
    a.kill()
    b.kill()
    await a.start()
    await b.start()
    await settled([a, b])
    for instance in (b, a):
        async with httpx.AsyncClient(base_url=instance.url, timeout=30) as client:
            for key in keys:
                headers = {"idempotency-key": key, "prefer": "respond-async"}
                again = await until_answered(client, "/bets", json=BET, headers=headers)
                assert again.status_code == 202
                assert again.headers["idempotent-replayed"] == "true"
                assert again.content == answers[key].content
    assert len(await read_all(topics["bets"])) == len(keys)
