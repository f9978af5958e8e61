"""The Redis revocation state against a real redis-server: errors translated, blocks pruned,
consumers of stopped processes reaped, and no pending revocation lost when Redis stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from authserver import appkeys
from authserver.clock import ManualClock, SystemClock
from authserver.errors import StoreUnavailable
from authserver.tokens.revocation import GROUP, STREAM, RedisState, RevocationWorker
from tests.fixtures.emulator import MakeEmulator
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.fixtures.redis import RedisServer, free_port
from tests.helpers import eventually


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: it is stopped (or frozen) on purpose."""
    server = RedisServer(port=free_port(), workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def quick_client(url: str, timeout: float = 0.5) -> aioredis.Redis:
    """A client that gives up on a silent Redis quickly."""
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


async def test_redis_errors_become_store_unavailable(own_redis: RedisServer) -> None:
    client = quick_client(own_redis.url)
    state = RedisState(client, "me", claim_idle=0.05)
    try:
        await state.enqueue([("tok-1", "post-cn-test")], 0)
        (job,) = await state.claim(5, 0.05)
        await asyncio.to_thread(own_redis.stop)
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: state.ack(job),
            lambda: state.failed(job, "upstream_unavailable", 0, final=False),
            lambda: state.blocks(),
            lambda: state.claim(5, 0.05),
            lambda: state.prune_blocks(0),
            lambda: state.reap_consumers(),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            assert isinstance(caught.value.__cause__, RedisError)
    finally:
        await client.aclose()


async def test_redis_freezing_mid_job_loses_no_revocation(own_redis: RedisServer) -> None:
    assert own_redis.process is not None
    pid = own_redis.process.pid
    client = quick_client(own_redis.url, timeout=0.3)
    inspect = aioredis.Redis.from_url(own_redis.url)
    state = RedisState(client, "me", claim_idle=0.2)
    revoked: list[str] = []

    async def revoke(_instance: str, token: str) -> None:
        revoked.append(token)
        if len(revoked) == 1:
            os.kill(pid, signal.SIGSTOP)  # the upstream confirmed; Redis stops before the ack

    worker = RevocationWorker(state, revoke, clock=SystemClock(), idle_wait=0.05, retry_pause=0.05)
    await state.enqueue([("tok-1", "post-cn-test")], int(time.time() * 1000))
    worker.start()
    try:

        async def failed_on_redis() -> bool:
            return worker.store_errors >= 1

        await eventually(failed_on_redis)
        os.kill(pid, signal.SIGCONT)

        async def done() -> bool:
            pending = await inspect.xpending(STREAM, GROUP)
            return bool(await inspect.xlen(STREAM) == 0 and pending["pending"] == 0)

        # Acknowledged: by the first ack landing late, or by the job claimed again and redone.
        await eventually(done)
        assert set(revoked) == {"tok-1"}
        assert worker._task is not None
        assert not worker._task.done()  # the worker survived the outage
    finally:
        os.kill(pid, signal.SIGCONT)
        await worker.stop()
        await client.aclose()
        await inspect.aclose()


@pytest.mark.parametrize("reached_upstream", [True, False], ids=["carried-out", "not-sent"])
async def test_a_job_taken_by_a_process_that_died_is_revoked_upstream_exactly_once(
    redis_url: str, reached_upstream: bool
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    dead = RedisState(client, "dead", claim_idle=0.05)
    live = RedisState(client, "live", claim_idle=0.05)
    upstream: Counter[str] = Counter()  # RevokeToken calls per token, as the upstream saw them

    async def revoke(_instance: str, token: str) -> None:
        upstream[token] += 1

    async def still_valid(_instance: str, token: str) -> bool:
        return upstream[token] == 0

    worker = RevocationWorker(
        live,
        revoke,
        clock=SystemClock(),
        idle_wait=0.05,
        retry_pause=0.05,
        still_valid=still_valid,
    )
    try:
        await live.enqueue([("tok-1", "post-cn-test")], int(time.time() * 1000))
        (job,) = await dead.claim(1, 0.01)  # its process took the job ...
        if reached_upstream:
            await revoke(job.instance_id, job.token)  # ... carried it out, died before the ack
        worker.start()

        async def done() -> bool:
            pending = await client.xpending(STREAM, GROUP)
            return bool(await client.xlen(STREAM) == 0 and pending["pending"] == 0)

        await eventually(done)  # handed to the live worker once idle for `claim_idle`
        assert upstream == {"tok-1": 1}
        assert worker.already_revoked == int(reached_upstream)
    finally:
        await worker.stop()
        await client.aclose()


async def test_a_job_that_waited_in_a_batch_past_the_claim_idle_is_left_to_its_new_holder(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    slow = RedisState(client, "slow", claim_idle=0.05)
    quick = RedisState(client, "quick", claim_idle=0.05)
    upstream: Counter[str] = Counter()
    first_landed = asyncio.Event()
    quick_done = asyncio.Event()

    async def slow_revoke(_instance: str, token: str) -> None:
        upstream[token] += 1
        first_landed.set()
        await quick_done.wait()  # its answer comes late: its batch waits meanwhile

    async def quick_revoke(_instance: str, token: str) -> None:
        upstream[token] += 1

    async def still_valid(_instance: str, token: str) -> bool:
        return upstream[token] == 0

    def worker(state: RedisState, revoke: Callable[[str, str], Awaitable[None]]) -> Any:
        return RevocationWorker(
            state, revoke, clock=SystemClock(), idle_wait=0.01, still_valid=still_valid
        )

    slow_worker, quick_worker = worker(slow, slow_revoke), worker(quick, quick_revoke)
    try:
        await slow.enqueue([("tok-1", "post-cn-test"), ("tok-2", "post-cn-test")], 0)
        slow_worker.start()  # takes both in one batch, and is stuck on the first
        await first_landed.wait()
        quick_worker.start()  # takes both over once idle: tok-1 was revoked, tok-2 was not
        await eventually(lambda: upstream["tok-2"] == 1 and quick_worker.already_revoked == 1)
        quick_done.set()

        async def done() -> bool:
            pending = await client.xpending(STREAM, GROUP)
            return bool(await client.xlen(STREAM) == 0 and pending["pending"] == 0)

        await eventually(done)
        await eventually(lambda: slow_worker.taken_over == 1)  # it came to tok-2, and left it
        assert upstream == {"tok-1": 1, "tok-2": 1}
    finally:
        quick_done.set()
        await slow_worker.stop()
        await quick_worker.stop()
        await client.aclose()


async def test_a_token_queued_again_after_its_revocation_is_not_revoked_twice(
    redis_url: str,
) -> None:
    # An admin's revocation queued its jobs, then failed (503) on a Redis node that went
    # away; the admin retried it, which queued the same tokens again.
    client = aioredis.Redis.from_url(redis_url)
    state = RedisState(client, "me", claim_idle=30.0)
    upstream: Counter[str] = Counter()

    async def revoke(_instance: str, token: str) -> None:
        upstream[token] += 1

    worker = RevocationWorker(state, revoke, clock=SystemClock(), idle_wait=0.01)

    async def drained() -> bool:
        return bool(await client.xlen(STREAM) == 0)

    try:
        worker.start()
        await state.enqueue([("tok-1", "post-cn-test")], int(time.time() * 1000))
        await eventually(lambda: upstream["tok-1"] == 1)
        await eventually(drained)
        await state.enqueue([("tok-1", "post-cn-test"), ("tok-2", "post-cn-test")], 0)
        await eventually(lambda: upstream["tok-2"] == 1)
        await eventually(drained)
        assert upstream == {"tok-1": 1, "tok-2": 1}
        assert worker.already_revoked == 1
    finally:
        await worker.stop()
        await client.aclose()


async def test_consumers_of_stopped_processes_are_reaped_once_nothing_is_pending(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    dead = RedisState(client, "dead-with-a-job", claim_idle=0.05, dead_after=0.05)
    empty = RedisState(client, "dead-empty", claim_idle=0.05, dead_after=0.05)
    live = RedisState(client, "live", claim_idle=0.05, dead_after=0.05)
    try:
        await live.enqueue([("tok-1", "post-cn-test"), ("tok-2", "post-cn-test")], 0)
        (job,) = await dead.claim(1, 0.01)  # took a job, then its process died
        (done,) = await empty.claim(1, 0.01)  # did its job, then its process died
        await empty.ack(done)

        async def consumers() -> dict[str, dict[str, Any]]:
            found = await client.xinfo_consumers(STREAM, GROUP)
            return {c["name"].decode(): c for c in found}

        async def both_idle() -> bool:
            seen = await consumers()
            return all(c["idle"] >= 60 for c in seen.values())

        await eventually(both_idle)
        # The consumer with a pending job stays: deleting it would drop the job.
        assert await live.reap_consumers() == 1
        assert set(await consumers()) == {"dead-with-a-job"}

        (claimed,) = await live.claim(5, 0.01)  # XAUTOCLAIM hands the job over
        assert claimed.id == job.id
        await live.ack(claimed)

        async def dead_idle() -> bool:
            return bool((await consumers())["dead-with-a-job"]["idle"] >= 60)

        await eventually(dead_idle)
        assert await live.reap_consumers() == 1
        assert set(await consumers()) == {"live"}  # a consumer never reaps itself
    finally:
        await client.aclose()


async def test_blocks_are_pruned_after_the_retention(
    make_emulator: MakeEmulator, make_gateway: MakeGateway, store_url: str | None
) -> None:
    clock = ManualClock(start=1_900_000_000.0)
    emulator = await make_emulator(clock=clock)
    client = await make_gateway(
        emulator, clock=clock, redis_url=store_url, revocation_block_retention=3600
    )
    revoker = client.server.app[appkeys.REVOKER]
    # App JWTs that live a day, longer than the retention: what a pruned block lets back in.
    old_jwt = make_jwt("olga", now=clock.time(), lifetime=86400)
    new_jwt = make_jwt("nina", now=clock.time(), lifetime=86400)
    await revoker.revoke_subject("olga")
    clock.advance(1800)
    await revoker.revoke_subject("nina")
    clock.advance(1801)  # olga's block is past the retention, nina's is not

    await revoker.maintain()
    stored = await revoker.state.blocks()
    assert set(stored["subject"]) == {"nina"}
    assert "olga" not in revoker._blocks["subject"]
    assert (await client.post("/v1/token", headers=bearer(old_jwt))).status == 200
    refused = await client.post("/v1/token", headers=bearer(new_jwt))
    assert refused.status == 401
    assert (await refused.json())["code"] == "token_revoked"
