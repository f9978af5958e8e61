"""The in-process store and its expiring map: live entries only, indexes that do not leak."""

from __future__ import annotations

from dataclasses import replace

import redis.asyncio as aioredis

from authserver.bounded import ExpiringMap
from authserver.clock import ManualClock
from authserver.tokens.model import TokenRecord
from authserver.tokens.store import (
    CLIENT_EPOCH,
    SUBJECT_EPOCH,
    MemoryStore,
    RedisStore,
    TokenStore,
)


def record(token: str, subject: str, expire_ms: int, client_id: str | None = None) -> TokenRecord:
    return TokenRecord(
        token=token,
        type="R",
        resources=("a/#",),
        expire_ms=expire_ms,
        refresh_at_ms=expire_ms - 1000,
        issued_ms=expire_ms - 10_000,
        subject=subject,
        instance_id="post-cn-test",
        client_id=client_id,
    )


def test_expiring_map_serves_until_and_evicts_oldest() -> None:
    dropped: list[str] = []
    data: ExpiringMap[str, int] = ExpiringMap(
        2, lambda v: v, on_drop=lambda k, _v: dropped.append(k)
    )
    data.put("a", 100, 0)
    data.put("b", 200, 0)
    assert data.get("a", 99) == 100
    assert data.get("a", 100) is None  # expired at 100, dropped when met
    data.put("c", 300, 100)
    data.put("d", 400, 100)  # full: the oldest ("b") goes
    assert data.get("b", 0) is None
    assert dropped == ["a", "b"]
    assert [k for k, _ in data.items(0)] == ["c", "d"]
    assert [k for k, _ in data.items(350)] == ["d"]


def test_expiring_map_lets_expired_entries_go_before_it_is_full() -> None:
    """Keys never asked for again (a device that left) go once expired, not when full."""
    dropped: list[str] = []
    data: ExpiringMap[str, int] = ExpiringMap(
        1000, lambda v: v, on_drop=lambda k, _v: dropped.append(k)
    )
    for i in range(10):
        data.put(f"old-{i}", 100 + i, 0)
    data.put("live", 1000, 50)
    assert len(data) == 11  # nothing expired yet
    for i in range(5):
        data.put(f"new-{i}", 1000, 200)  # every old one has expired by now
    assert len(data) == 6
    assert sorted(dropped) == sorted(f"old-{i}" for i in range(10))
    assert data.get("live", 200) == 1000


async def test_memory_store_indexes_follow_expiry_and_eviction() -> None:
    clock = ManualClock(start=1000.0)
    store = MemoryStore(clock, maxsize=2)
    now = int(clock.time() * 1000)
    await store.put("k1", record("t1", "alice", now + 5000, "GID_a@@@1"))
    await store.put("k2", record("t2", "alice", now + 50_000))
    assert {k for k, _ in await store.subject_tokens("alice")} == {"k1", "k2"}
    assert await store.lookup("t1") is not None
    assert [k for k, _ in await store.client_tokens("GID_a@@@1")] == ["k1"]

    clock.advance(6)  # t1 expired
    assert await store.get("k1", "alice") is None
    assert await store.lookup("t1") is None
    assert await store.client_tokens("GID_a@@@1") == []

    await store.put("k3", record("t3", "bob", now + 90_000))
    await store.put("k4", record("t4", "bob", now + 90_000))  # evicts k2
    assert await store.lookup("t2") is None
    assert await store.subject_tokens("alice") == []
    # Nothing left behind for what is gone.
    assert len(store._by_value) == 2
    assert "alice" not in store._by_subject
    assert "GID_a@@@1" not in store._by_client


async def test_memory_store_delete_and_replace() -> None:
    clock = ManualClock(start=1000.0)
    store = MemoryStore(clock)
    now = int(clock.time() * 1000)
    first = record("t1", "carol", now + 5000)
    await store.put("k", first)
    await store.put("k", record("t2", "carol", now + 5000))  # renewed under the same key
    assert await store.lookup("t1") is None
    found = await store.lookup("t2")
    assert found is not None
    await store.delete("k", found[1])
    assert await store.get("k", "carol") is None
    assert await store.subject_tokens("carol") == []


async def test_a_record_minted_under_an_old_epoch_is_not_stored(store_url: str | None) -> None:
    clock = ManualClock(start=1000.0)
    redis = None if store_url is None else aioredis.Redis.from_url(store_url)
    store: TokenStore = MemoryStore(clock) if redis is None else RedisStore(redis, clock)
    dan = ((SUBJECT_EPOCH, "dan"),)
    try:
        now = int(clock.time() * 1000)
        assert await store.epochs(dan) == (("subject", "dan", 0),)
        assert await store.put(
            "k0", record("t0", "dan", now + 50_000), epochs=await store.epochs(dan)
        )
        assert await store.bump_epoch(SUBJECT_EPOCH, "dan") == 1
        assert await store.epochs(dan) == (("subject", "dan", 1),)
        assert await store.epochs(((SUBJECT_EPOCH, "eve"),)) == (("subject", "eve", 0),)

        assert not await store.put(
            "k1", record("t1", "dan", now + 50_000), epochs=(("subject", "dan", 0),)
        )
        assert await store.get("k1", "dan") is None
        assert await store.lookup("t1") is None
        assert [k for k, _ in await store.subject_tokens("dan")] == ["k0"]
        assert await store.put(
            "k1", record("t1", "dan", now + 50_000), epochs=(("subject", "dan", 1),)
        )
        assert await store.put("k2", record("t2", "dan", now + 50_000))  # unconditional
        assert {k for k, _ in await store.subject_tokens("dan")} == {"k0", "k1", "k2"}
    finally:
        if redis is not None:
            await redis.aclose()


async def test_a_record_minted_under_an_old_client_epoch_is_not_kept(store_url: str | None) -> None:
    # A clientId's epoch is not in the subject's slot (Redis checks it after the write): the
    # record must still be gone from every index once `put` said no.
    clock = ManualClock(start=1000.0)
    redis = None if store_url is None else aioredis.Redis.from_url(store_url)
    store: TokenStore = MemoryStore(clock) if redis is None else RedisStore(redis, clock)
    names = ((SUBJECT_EPOCH, "dan"), (CLIENT_EPOCH, "c-1"))
    try:
        now = int(clock.time() * 1000)
        before = await store.epochs(names)
        assert before == (("subject", "dan", 0), ("client", "c-1", 0))
        assert await store.bump_epoch(CLIENT_EPOCH, "c-1") == 1
        assert await store.epochs(((SUBJECT_EPOCH, "c-1"),)) == (("subject", "c-1", 0),)

        assert not await store.put("k1", record("t1", "dan", now + 50_000, "c-1"), epochs=before)
        assert await store.get("k1", "dan") is None
        assert await store.lookup("t1") is None
        assert await store.subject_tokens("dan") == []
        assert await store.client_tokens("c-1") == []
        fresh = await store.epochs(names)
        assert await store.put("k1", record("t1", "dan", now + 50_000, "c-1"), epochs=fresh)
        assert [k for k, _ in await store.client_tokens("c-1")] == ["k1"]
    finally:
        if redis is not None:
            await redis.aclose()


async def test_memory_store_subject_with_many_clients_keeps_every_key() -> None:
    # A subject's keys are a short list, then a set once it holds many (one identity used by
    # many clientIds): every key stays found, and leaves the index when it goes.
    clock = ManualClock(start=1000.0)
    store = MemoryStore(clock)
    now = int(clock.time() * 1000)
    keys = [f"k{i}" for i in range(40)]
    for i, key in enumerate(keys):
        await store.put(key, record(f"t{i}", "dave", now + 5000, f"GID_a@@@{i}"))
    await store.put("k3", record("t3b", "dave", now + 5000, "GID_a@@@3"))  # replaced: once
    assert sorted(k for k, _ in await store.subject_tokens("dave")) == sorted(keys)
    assert [k for k, _ in await store.client_tokens("GID_a@@@7")] == ["k7"]
    for key, found in list(await store.subject_tokens("dave")):
        if key != "k0":
            await store.delete(key, found)
    assert [k for k, _ in await store.subject_tokens("dave")] == ["k0"]
    assert await store.lookup("t0") is not None
    assert await store.lookup("t3b") is None
    await store.delete("k0", record("t0", "dave", now + 5000, "GID_a@@@0"))
    assert "dave" not in store._by_subject
    assert store._by_value == {}
    assert store._by_client == {}


def test_expiring_map_bounded_by_bytes_never_holds_more() -> None:
    dropped: list[str] = []
    data: ExpiringMap[str, str] = ExpiringMap(
        100,
        on_drop=lambda k, _v: dropped.append(k),
        max_bytes=1000,
        weigh=lambda _k, v: len(v),
    )
    assert data.put("a", "x" * 400)
    assert data.put("b", "x" * 400)
    assert data.put("c", "x" * 400)  # 1,200 > 1,000: the oldest goes first
    assert dropped == ["a"]
    assert data.bytes == 800
    assert not data.put("huge", "x" * 1001)  # larger than the whole bound: never kept
    assert data.get("huge", 0) is None
    assert [k for k, _ in data.items(0)] == ["b", "c"]  # and nothing went for it
    data.pop("b")
    assert data.bytes == 400
    data.clear()
    assert data.bytes == 0


def test_expiring_map_touch_keeps_what_is_used() -> None:
    data: ExpiringMap[str, int] = ExpiringMap(2, touch=True)
    data.put("a", 1)
    data.put("b", 2)
    assert data.get("a", 0) == 1  # used: b is now the oldest
    data.put("c", 3)
    assert data.get("b", 0) is None
    assert data.get("a", 0) == 1


async def test_memory_store_bounded_by_bytes_keeps_indexes_true() -> None:
    clock = ManualClock(start=1000.0)
    evicted: list[str] = []
    store = MemoryStore(clock, maxsize=10_000, max_bytes=20_000)
    store.watch_evictions(evicted.append)
    now = int(clock.time() * 1000)
    for n in range(100):  # 1,000-character tokens: about 1.5 KB a record by record_weight
        await store.put(f"k{n}", record(f"{n:04d}" + "t" * 996, f"s{n}", now + 90_000, f"c{n}"))
        assert store._records.bytes <= 20_000
    kept = [k for k, _ in store._records.items(0)]
    assert 5 <= len(kept) < 100
    assert evicted == [f"k{n}" for n in range(100 - len(kept))]
    # The newest still answer, by key, subject, client and value; the evicted left nothing.
    assert (await store.get("k99", "s99")) is not None
    assert [k for k, _ in await store.subject_tokens("s99")] == ["k99"]
    assert [k for k, _ in await store.client_tokens("c99")] == ["k99"]
    found = await store.lookup("0099" + "t" * 996)
    assert found is not None
    assert found[0] == "k99"
    assert await store.lookup("0000" + "t" * 996) is None
    assert len(store._by_value) == len(store._by_subject) == len(store._by_client) == len(kept)


async def test_memory_store_byte_bound_counts_a_records_claim_marks() -> None:
    # 32 values of 200 characters (a "groups" claim): the marks are the record's own strings,
    # 8.2 KB by `weight`, 15 times the rest (550). Uncounted, ten records (87 KB) fit in 20 KB.
    clock = ManualClock(start=1000.0)
    store = MemoryStore(clock, maxsize=10_000, max_bytes=20_000)
    now = int(clock.time() * 1000)
    for n in range(10):
        marks = tuple(sorted(f"groups={n:02d}{m:02d}" + "g" * 196 for m in range(32)))
        kept = replace(record(f"tok{n}", f"s{n}", now + 90_000), marks=marks)
        await store.put(f"k{n}", kept)
        assert store._records.bytes <= 20_000
    assert len(store._records) <= 2, len(store._records)
