"""Against a real 3-node Redis Cluster: tokens shared by two gateways, revocation, narrowing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from authserver import appkeys
from authserver.clock import ManualClock
from authserver.redis_conn import connect_redis, open_redis
from authserver.settings import SettingsError, load_settings
from authserver.tokens.model import TokenRecord
from authserver.tokens.store import BATCH, CLIENT_EPOCH, SUBJECT_EPOCH, RedisStore
from tests.admin.conftest import admin_headers
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.helpers import eventually
from tests.ops.test_policy_reload import NARROW, WIDE, ConfigMapDir


def apply_calls(emulator: EmulatorHandle) -> int:
    """Successful ApplyToken calls the emulator answered."""
    return int(emulator.state.stats()["success"].get("ApplyToken", 0))


async def test_client_spreads_keys_over_the_nodes(redis_cluster_url: str) -> None:
    client = connect_redis(redis_cluster_url, cluster=True)
    try:
        for i in range(30):
            await client.set(f"spread:{i}", i)
        nodes = client.get_primaries()
        assert len(nodes) == 3
        sizes = [await client.dbsize(target_nodes=node) for node in nodes]
        assert all(size > 0 for size in sizes), sizes
    finally:
        await client.aclose()


async def test_two_gateways_share_tokens_through_the_cluster(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_cluster_url: str
) -> None:
    one = await make_gateway(emulator, redis_url=redis_cluster_url, redis_cluster=True)
    two = await make_gateway(emulator, redis_url=redis_cluster_url, redis_cluster=True)
    subjects = [f"dev-{i}" for i in range(12)]  # their keys land on every node
    first: dict[str, str] = {}
    for subject in subjects:
        resp = await one.post("/v1/token", headers=bearer(make_jwt(subject)))
        assert resp.status == 200, await resp.text()
        first[subject] = (await resp.json())["password"]
    assert apply_calls(emulator) == 2 * len(subjects)  # one R and one W each
    for subject in subjects:
        resp = await two.post("/v1/token", headers=bearer(make_jwt(subject)))
        assert resp.status == 200
        assert (await resp.json())["password"] == first[subject]
    assert apply_calls(emulator) == 2 * len(subjects)
    assert (await two.get("/readyz")).status == 200


async def test_concurrent_first_requests_mint_once_across_gateways(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_cluster_url: str
) -> None:
    one = await make_gateway(emulator, redis_url=redis_cluster_url, redis_cluster=True)
    two = await make_gateway(emulator, redis_url=redis_cluster_url, redis_cluster=True)
    jwt = make_jwt("carol")
    answers = await asyncio.gather(
        *(c.post("/v1/token", headers=bearer(jwt)) for c in (one, two) for _ in range(5))
    )
    passwords = {(await a.json())["password"] for a in answers}
    assert len(passwords) == 1
    assert apply_calls(emulator) == 2  # the issuance lock works across gateways in the cluster


async def test_a_client_id_epoch_guards_a_put_across_slots(redis_cluster_url: str) -> None:
    # The clientId's epoch lives in another slot than the record: read after the write, and
    # a moved one takes the record out of every index again.
    client = await open_redis(redis_cluster_url, cluster=True)
    clock = ManualClock(start=1000.0)
    store = RedisStore(client, clock)
    names = ((SUBJECT_EPOCH, "zoe"), (CLIENT_EPOCH, "GID_fleet@@@zoe-1"))
    expire_ms = int(clock.time() * 1000) + 60_000
    record = TokenRecord(
        token="tok-zoe", type="R", resources=("a/#",), expire_ms=expire_ms,
        refresh_at_ms=expire_ms - 1000, issued_ms=expire_ms - 60_000, subject="zoe",
        instance_id="mqtt-test", client_id="GID_fleet@@@zoe-1",
    )  # fmt: skip
    try:
        before = await store.epochs(names)
        await store.bump_epoch(CLIENT_EPOCH, "GID_fleet@@@zoe-1")
        assert not await store.put("k", record, epochs=before)
        assert await store.lookup("tok-zoe") is None
        assert await store.client_tokens("GID_fleet@@@zoe-1") == []
        assert await store.put("k", record, epochs=await store.epochs(names))
        assert [k for k, _ in await store.client_tokens("GID_fleet@@@zoe-1")] == ["k"]
    finally:
        await client.aclose()


async def test_batched_reads_and_deletes_span_every_slot(redis_cluster_url: str) -> None:
    # Records of many subjects live in many slots on every node: a sweep, a clientId's
    # listing and a batched delete (MGET by slot, a pipeline per batch) each see them all.
    client = await open_redis(redis_cluster_url, cluster=True)
    clock = ManualClock(start=1000.0)
    store = RedisStore(client, clock)
    expire_ms = int(clock.time() * 1000) + 60_000
    records = {
        f"k{i}": TokenRecord(
            token=f"tok-{i}",
            type="R",
            resources=("a/#",),
            expire_ms=expire_ms,
            refresh_at_ms=expire_ms - 1000,
            issued_ms=expire_ms - 60_000,
            subject=f"s{i}",
            instance_id="mqtt-test",
            client_id="GID_fleet@@@all",
        )
        for i in range(BATCH + 100)
    }
    try:
        for key, record in records.items():
            assert await store.put(key, record)
        assert {key: rec async for key, rec in store.all_tokens()} == records
        listed = await store.client_tokens("GID_fleet@@@all")
        assert dict(listed) == records
        await store.delete_many(listed)
        assert [key async for key, _rec in store.all_tokens()] == []
        assert await store.client_tokens("GID_fleet@@@all") == []
        assert await store.lookup("tok-7") is None
        assert await store.subject_tokens("s7") == []
    finally:
        await client.aclose()


async def test_revocation_through_the_cluster(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_cluster_url: str
) -> None:
    one = await make_gateway(emulator, redis_url=redis_cluster_url, redis_cluster=True)
    two = await make_gateway(emulator, redis_url=redis_cluster_url, redis_cluster=True)
    jwt = make_jwt("alice")
    creds = await (await one.post("/v1/token", headers=bearer(jwt))).json()
    tokens = [t["token"] for t in creds["tokens"]]
    # Gateway two has the tokens in its L1 after serving them once.
    served = await (await two.post("/v1/token", headers=bearer(jwt))).json()
    assert served["password"] == creds["password"]

    resp = await one.post(
        "/v1/admin/revoke",
        json={"subject": "alice", "blockIssuedBefore": False},
        headers=admin_headers(),
    )
    assert resp.status == 202, await resp.text()
    answer = await resp.json()
    assert answer["revokedLocally"] == 2
    await eventually(lambda: all(emulator.state.is_revoked(t) for t in tokens))

    # Gateway two forgets them too (the invalidation reached it) and mints new ones.
    async def fresh_on_two() -> bool:
        body = await (await two.post("/v1/token", headers=bearer(jwt))).json()
        return not set(tokens) & {t["token"] for t in body["tokens"]}

    end = time.monotonic() + 2
    while not await fresh_on_two():
        assert time.monotonic() < end, "gateway two still serves revoked tokens"
        await asyncio.sleep(0.05)
    # The durable queue (a stream in the cluster) drains to empty.
    end = time.monotonic() + 5
    while True:
        status = await (await one.get("/v1/admin/revocations", headers=admin_headers())).json()
        if status["depth"] == 0:
            break
        assert time.monotonic() < end, status
        await asyncio.sleep(0.05)


async def test_narrowing_sweeps_every_node(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_cluster_url: str, tmp_path: Path
) -> None:
    config = ConfigMapDir(tmp_path / "config", WIDE)
    client = await make_gateway(
        emulator,
        redis_url=redis_cluster_url,
        redis_cluster=True,
        policy_file=config.path,
        policy_poll_interval=0.05,
    )
    assert client.app is not None
    read_tokens = []
    for i in range(9):
        body = await (await client.post("/v1/token", headers=bearer(make_jwt(f"n{i}")))).json()
        read_tokens += [t["token"] for t in body["tokens"] if t["type"] == "R"]
    config.update(NARROW)
    watcher = client.app[appkeys.POLICY_WATCHER]
    await eventually(lambda: watcher.narrowed == 9)
    await eventually(lambda: all(emulator.state.is_revoked(t) for t in read_tokens), within=8)


def test_cluster_setting_needs_a_url() -> None:
    with pytest.raises(SettingsError, match="REDIS_CLUSTER=true needs"):
        load_settings({"AUTHSERVER_REDIS_CLUSTER": "true"})
    with pytest.raises(SettingsError, match="REDIS_CLUSTER='maybe' is not true or false"):
        load_settings({"AUTHSERVER_REDIS_CLUSTER": "maybe"})
