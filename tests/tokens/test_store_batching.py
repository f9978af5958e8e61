"""The Redis store reads and deletes many records in batches: few round trips, same answers.

Round trips are counted on the store's own client: every command sent alone
(`execute_command`) and every pipeline sent (`Pipeline.execute`) is one.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from authserver import appkeys
from authserver.app import REDIS
from authserver.clock import ManualClock
from authserver.tokens.model import TokenRecord
from authserver.tokens.store import BATCH, RedisStore
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway

# More than two batches, so that batching (not one huge command) is what is measured.
MANY = 2 * BATCH + 200


class RoundTrips:
    """Counts what `client` sends to Redis, one per command alone or per pipeline."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client: aioredis.Redis) -> None:
        self.count = 0
        alone = client.execute_command
        piped = Pipeline.execute

        async def execute_command(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await alone(*args, **kwargs)

        async def execute(pipe: Pipeline, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await piped(pipe, *args, **kwargs)

        monkeypatch.setattr(client, "execute_command", execute_command)
        monkeypatch.setattr(Pipeline, "execute", execute)

    def since(self, start: int) -> int:
        return self.count - start


def record(i: int, expire_ms: int, client_id: str | None = "fleet") -> TokenRecord:
    return TokenRecord(
        token=f"tok-{i}",
        type="R",
        resources=("a/#",),
        expire_ms=expire_ms,
        refresh_at_ms=expire_ms - 1000,
        issued_ms=expire_ms - 10_000,
        subject=f"dev-{i % 97}",
        instance_id="post-cn-test",
        client_id=client_id,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


async def filled(redis_url: str, clock: ManualClock) -> tuple[aioredis.Redis, RedisStore]:
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(client, clock)
    now = int(clock.time() * 1000)
    for i in range(MANY):
        assert await store.put(f"k{i}", record(i, now + 60_000))
    return client, store


async def test_a_sweep_reads_records_a_batch_per_round_trip(
    redis_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, store = await filled(redis_url, clock)
    try:
        # One more that is dead already (Redis still has it): skipped, as before.
        now = int(clock.time() * 1000)
        await client.set(store._record_key("dead", "dev-0"), record(0, now - 1).to_json())
        trips = RoundTrips(monkeypatch, client)
        found = {key: rec async for key, rec in store.all_tokens()}
        assert set(found) == {f"k{i}" for i in range(MANY)}
        assert all(found[f"k{i}"] == record(i, now + 60_000) for i in range(MANY))
        # A GET per record made it MANY + the SCAN steps; now a MGET per BATCH keys. The
        # SCAN itself walks every key (records, indexes: ~2 * MANY) at COUNT=BATCH a step.
        assert trips.count <= 3 + 3 * MANY // BATCH + 4
    finally:
        await client.aclose()


async def test_a_sweep_holds_one_batch_and_skips_records_gone_meanwhile(
    redis_url: str, clock: ManualClock
) -> None:
    client, store = await filled(redis_url, clock)
    try:
        sweep = store.all_tokens()
        first, _ = await anext(sweep)
        # Everything not read yet goes (a revocation by another replica, say): the sweep
        # ends with what its current batch had read, never a record deleted before its read.
        read = [first]
        records = {f"k{i}": record(i, int(clock.time() * 1000) + 60_000) for i in range(MANY)}
        gone = [(k, r) for k, r in records.items() if k != first]
        await store.delete_many(gone)
        read += [key async for key, _rec in sweep]
        assert 1 <= len(read) <= BATCH
        assert len(set(read)) == len(read)
    finally:
        await client.aclose()


async def test_listing_and_deleting_many_tokens_of_a_client_is_batched(
    redis_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, store = await filled(redis_url, clock)
    try:
        trips = RoundTrips(monkeypatch, client)
        listed = await store.client_tokens("fleet")
        assert {key for key, _rec in listed} == {f"k{i}" for i in range(MANY)}
        # The index read, then a MGET per BATCH records (it was a GET per record).
        assert trips.count <= 1 + (MANY + BATCH - 1) // BATCH
        start = trips.count
        await store.delete_many(listed)
        # A pipeline per BATCH records (it was three round trips or more per record).
        assert trips.since(start) == (MANY + BATCH - 1) // BATCH
        assert await store.client_tokens("fleet") == []
        for i in (0, 1, MANY - 1):
            assert await store.lookup(f"tok-{i}") is None
            assert await store.subject_tokens(f"dev-{i % 97}") == []
        assert [key async for key, _rec in store.all_tokens()] == []
    finally:
        await client.aclose()


async def test_revoking_a_client_with_many_tokens_reads_and_deletes_them_in_batches(
    emulator: EmulatorHandle,
    make_gateway: MakeGateway,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gateway = await make_gateway(emulator, redis_url=redis_url)
    assert gateway.app is not None
    store = gateway.app[appkeys.TOKENS].store
    revoker = gateway.app[appkeys.REVOKER]
    now = int(gateway.app[appkeys.CLOCK].time() * 1000)
    records = {f"k{i}": record(i, now + 60_000) for i in range(MANY)}
    for key, rec in records.items():
        assert await store.put(key, rec)
    trips = RoundTrips(monkeypatch, gateway.app[REDIS])
    # Upstream held back an hour: the worker takes none of the jobs while this counts.
    result = await revoker.revoke_client("fleet", block_issued_before=False, grace=3600)
    spent = trips.count
    assert result.revoked_locally == MANY
    assert result.queued == MANY
    # The epoch, the listing (index + a MGET per batch), the queue and the marks, a
    # pipeline per batch of deletes, the bus message, and a few polls of the worker
    # running beside: ~17. It was a GET and 3 or more round trips a token.
    assert spent <= 30, spent
    assert await store.client_tokens("fleet") == []
    assert [key async for key, _rec in store.all_tokens()] == []
    for rec in records.values():
        assert await revoker.is_revoked(rec.token)
