"""The GCRA step, in Python and in Redis: the same answers, and the Redis outage rule."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from authserver.clock import ManualClock
from authserver.limits import (
    RESERVE_AT_SCRIPT,
    Rate,
    SharedBuckets,
    next_slot,
    reserve,
    script_args,
)
from tests.fixtures.redis import RedisServer, free_port

log = logging.getLogger("tests.limits")

BURST_OF_3 = Rate(interval=1.0, tolerance=2.0)
PACED = Rate(interval=0.5)


@pytest.mark.parametrize(
    ("tats", "rates", "latest", "expected"),
    [
        # An empty (full) bucket admits at once and runs one interval ahead.
        ([-1e9], [BURST_OF_3], 0.0, (0.0, [1.0])),
        # Within the tolerance: admitted now, the TAT moves on from where it was.
        ([2.0], [BURST_OF_3], 0.0, (0.0, [3.0])),
        # Past it: refused with the wait until the TAT is back within the tolerance.
        ([3.25], [BURST_OF_3], 0.0, (1.25, None)),
        # The same bucket, when the caller accepts that wait: the slot is reserved.
        ([3.25], [BURST_OF_3], 1.25, (1.25, [4.25])),
        # Several buckets: the latest one sets the slot, every bucket moves past it.
        ([0.75, 0.25], [PACED, PACED], 1.0, (0.75, [1.25, 1.25])),
        # ... and one that is too far refuses all of them.
        ([0.0, 2.0], [PACED, PACED], 1.0, (2.0, None)),
        # A bucket with a tolerance keeps its own TAT when the slot is before it.
        ([3.0, 0.5], [BURST_OF_3, PACED], 1.0, (1.0, [4.0, 1.5])),
    ],
)
def test_one_step(
    tats: list[float],
    rates: list[Rate],
    latest: float,
    expected: tuple[float, list[float] | None],
) -> None:
    assert reserve(tats, rates, 0.0, latest) == expected


def test_a_burst_then_the_sustained_rate() -> None:
    clock = ManualClock()
    tat = clock.monotonic()
    admitted = 0
    for _ in range(5):
        _slot, tats = reserve([tat], [BURST_OF_3], clock.monotonic(), clock.monotonic())
        if tats is not None:
            tat = tats[0]
            admitted += 1
    assert admitted == 3
    assert next_slot([tat], [BURST_OF_3], clock.monotonic()) == clock.monotonic() + 1.0
    clock.advance(1.0)
    assert reserve([tat], [BURST_OF_3], clock.monotonic(), clock.monotonic())[1] is not None


# Long intervals: a Redis key lives (in real time) at least one interval, so the replay on a
# ManualClock never sees a key expire that its own time says is still ahead.
RATES = [Rate(1000.0, 0.0), Rate(1500.0, 4500.0), Rate(2500.0, 2500.0)]
MAX_WAITS = [0.0, 750.0, 3000.0]
STEPS = [0.0, 0.0, 250.0, 500.0, 1000.0, 2750.0, 6000.0]


@pytest.mark.parametrize("seed", range(4))
async def test_the_redis_script_gives_the_answers_of_the_python_step(
    redis_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script(RESERVE_AT_SCRIPT)
    keys = [f"limits-test:{i}" for i in range(len(RATES))]
    # Every value is a multiple of 1/4 s: exact in binary floats and in microseconds.
    tats = [-1e9] * len(RATES)
    granted = refused = 0
    try:
        for _ in range(300):
            clock.advance(rng.choice(STEPS))
            chosen = sorted(rng.sample(range(len(RATES)), rng.randint(1, len(RATES))))
            rates = [RATES[i] for i in chosen]
            max_wait = rng.choice(MAX_WAITS)
            now = clock.monotonic()
            slot, new = reserve([tats[i] for i in chosen], rates, now, now + max_wait)
            args = [*script_args(rates, max_wait), round(now * 1e6)]
            ok, wait_us = await script(keys=[keys[i] for i in chosen], args=args)
            assert (bool(ok), int(wait_us)) == (new is not None, round((slot - now) * 1e6))
            if new is None:
                refused += 1
                continue
            granted += 1
            for i, tat in zip(chosen, new, strict=True):
                tats[i] = tat
            stored = await client.mget([keys[i] for i in chosen])
            assert [int(v) for v in stored] == [round(t * 1e6) for t in new]
        # The sequence went both ways, and waited for slots as well as refusing them.
        assert granted > 50
        assert refused > 50
    finally:
        await client.aclose()


async def test_shared_buckets_reserve_on_the_server_clock(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    shared = SharedBuckets(
        client, clock=ManualClock(), log=log, owner="test", fallback="local", back="shared"
    )
    try:
        hour = Rate(3600.0, 7200.0)  # a burst of 3, then one an hour
        answers = [await shared.reserve(["b"], [hour]) for _ in range(4)]
        assert [a is not None and a[0] for a in answers] == [True, True, True, False]
        assert answers[3] is not None
        assert 0 < answers[3][1] <= 3600
        # Both or neither: "b" is full, so "other" is not touched.
        both = await shared.reserve(["other", "b"], [hour, hour])
        assert both is not None
        assert not both[0]
        assert await client.exists("other") == 0
        # A key lives until its TAT, three hours after the first grant: no longer.
        assert 2 * 3600_000 < await client.pttl("b") <= 3 * 3600_000 + 1
        # Accepting the wait reserves the slot.
        step = await shared.reserve(["b"], [hour], max_wait=3600.0)
        assert step is not None
        assert step[0]
        assert shared.errors == 0
    finally:
        await client.aclose()


async def test_shared_buckets_step_aside_while_redis_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(port=free_port(), workdir=tmp_path)  # not started yet
    client = aioredis.Redis(
        host="127.0.0.1", port=server.port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    clock = ManualClock()
    shared = SharedBuckets(
        client,
        clock=clock,
        log=log,
        owner="tester",
        fallback="counting here",
        back="sharing again",
        retry_interval=5.0,
    )
    rates = [Rate(1.0)]
    try:
        with caplog.at_level(logging.WARNING, logger=log.name):
            assert await shared.reserve(["k"], rates) is None
            assert (shared.down, shared.errors) == (True, 1)
            assert await shared.reserve(["k"], rates) is None  # not asked again yet
            assert shared.errors == 1
            clock.advance(5.0)
            assert await shared.reserve(["k"], rates) is None  # asked, still down
            assert shared.errors == 2
            server.start()
            assert await shared.reserve(["k"], rates) is None  # within the retry interval
            clock.advance(5.0)
            assert await shared.reserve(["k"], rates) == (True, 0.0)
            assert not shared.down
        messages = [r.getMessage() for r in caplog.records if r.name == log.name]
        assert messages == [
            "tester: Redis failed (ConnectionError); counting here",
            "tester: Redis is back, sharing again",
        ]
    finally:
        await client.aclose()
        server.stop()
