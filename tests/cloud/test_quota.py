"""The quota governor: even pacing, deadlines, the account limit, Redis-shared buckets."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from authserver.clock import ManualClock
from authserver.cloud import quota
from authserver.cloud.errors import UpstreamThrottled
from authserver.cloud.quota import DEFAULT_LIMITS, QuotaGovernor
from tests.cloud.vtime import VirtualTime, max_in_window
from tests.fixtures.redis import free_port

FAR = 1e9


async def take(governor: QuotaGovernor, action: str, deadline: float) -> None:
    """A call that is over as soon as it is granted."""
    (await governor.acquire(action, deadline)).release()


def governor_on(clock: ManualClock, vt: VirtualTime, **kwargs: object) -> QuotaGovernor:
    """A local governor whose sleeps run on virtual time."""
    return QuotaGovernor(clock=clock, sleep=vt.sleep, idle=vt.sleep, **kwargs)  # type: ignore[arg-type]


async def test_defaults_are_the_documented_limits() -> None:
    governor = QuotaGovernor(limits={"RevokeToken": 200})
    assert DEFAULT_LIMITS["ApplyToken"] == 100
    assert DEFAULT_LIMITS["RevokeToken"] == 5
    assert governor.limits["RevokeToken"] == 200
    assert governor.limits["QueryToken"] == 100
    assert governor.account_limit == 300
    with pytest.raises(ValueError, match="positive"):
        QuotaGovernor(limits={"ApplyToken": 0})


async def test_concurrent_calls_are_paced_evenly() -> None:
    clock = ManualClock()
    vt = VirtualTime(clock)
    governor = governor_on(clock, vt, margin=0.05)
    granted: list[float] = []

    async def one() -> None:
        await take(governor, "RevokeToken", FAR)
        granted.append(clock.monotonic())

    results = await vt.run(one() for _ in range(30))
    assert all(r is None for r in results)
    gaps = [b - a for a, b in itertools.pairwise(granted)]
    assert gaps == pytest.approx([1.05 / 5] * 29)
    assert max_in_window(granted) <= 5
    assert governor.stats()["acquired"] == {"RevokeToken": 30}
    assert governor.stats()["waits"] == {"RevokeToken": 29}


async def test_refuses_at_once_when_the_slot_is_after_the_deadline() -> None:
    clock = ManualClock()
    vt = VirtualTime(clock)
    governor = governor_on(clock, vt, margin=0.0)
    start = clock.monotonic()
    await governor.acquire("RevokeToken", start)
    with pytest.raises(UpstreamThrottled) as caught:
        await governor.acquire("RevokeToken", start + 0.1)
    assert caught.value.retry_after == pytest.approx(0.2)
    assert caught.value.headers["Retry-After"] == "1"
    assert caught.value.status == 503
    assert caught.value.code == "upstream_throttled"
    assert clock.monotonic() == start, "a refusal must not wait"
    # The refusal reserved nothing: the next slot is still the first free one.
    await vt.run([governor.acquire("RevokeToken", start + 1)])
    assert clock.monotonic() == pytest.approx(start + 0.2)
    assert governor.stats()["refused"] == {"RevokeToken": 1}


async def test_the_account_limit_spans_all_actions() -> None:
    clock = ManualClock()
    vt = VirtualTime(clock)
    governor = governor_on(clock, vt, account_limit=10, margin=0.0)
    granted: list[float] = []

    async def one(action: str) -> None:
        await take(governor, action, FAR)
        granted.append(clock.monotonic())

    actions = ["ApplyToken", "QueryToken", "SomethingUnlimited"] * 10
    await vt.run(one(a) for a in actions)
    assert len(granted) == 30
    assert max_in_window(granted, 0.999) <= 10
    assert granted[-1] - granted[0] == pytest.approx(29 * 0.1)


async def test_both_slots_or_neither() -> None:
    clock = ManualClock()
    vt = VirtualTime(clock)
    governor = governor_on(clock, vt, account_limit=1, margin=0.0)
    start = clock.monotonic()
    await take(governor, "Unlimited", start)  # the account bucket is busy for 1 s
    with pytest.raises(UpstreamThrottled):
        await governor.acquire("RevokeToken", start + 0.5)
    clock.advance(1.0)
    # Had the refused call taken its RevokeToken slot (at start + 1), this would have to wait.
    await governor.acquire("RevokeToken", clock.monotonic())


async def test_a_late_wake_up_does_not_crowd_the_window() -> None:
    clock = ManualClock()
    # The second sleeper (slot 0.22) wakes 0.2 s late, at 0.42.
    vt = VirtualTime(clock, late=lambda n: 0.2 if n == 0 else 0.0)
    governor = governor_on(clock, vt, margin=0.1)
    granted: list[float] = []

    async def one() -> None:
        await take(governor, "RevokeToken", FAR)
        granted.append(clock.monotonic())

    await vt.run(one() for _ in range(12))
    assert granted[1] == pytest.approx(0.42 + granted[0])
    assert max_in_window(granted) <= 5


async def test_redis_shares_one_bucket_between_governors(redis_url: str) -> None:
    first = redis.asyncio.Redis.from_url(redis_url)
    second = redis.asyncio.Redis.from_url(redis_url)
    try:
        limits = {"RevokeToken": 40}
        governors = [QuotaGovernor(limits, redis=first), QuotaGovernor(limits, redis=second)]
        granted: list[float] = []

        async def one(governor: QuotaGovernor) -> None:
            await governor.acquire("RevokeToken", time.monotonic() + 10)
            granted.append(time.monotonic())

        await asyncio.gather(*(one(g) for g in governors for _ in range(30)))
        assert len(granted) == 60
        # Two separate buckets would have let all 60 through in 0.8 s.
        assert max_in_window(granted) <= 40
        assert all(g.mode == "redis" for g in governors)
        assert governors[0].stats()["acquired"]["RevokeToken"] == 30
        # The other instance's reservation is seen: a short deadline is refused at once.
        await governors[0].acquire("RevokeToken", time.monotonic() + 1)
        with pytest.raises(UpstreamThrottled):
            await governors[1].acquire("RevokeToken", time.monotonic() + 0.001)
        # A Redis that lost its scripts (restart, failover) gets the script again.
        await first.script_flush()
        await governors[1].acquire("Unlimited", time.monotonic() + 1)
        keys = sorted(k.decode() for k in await first.keys("*"))
        assert keys == ["{authserver:quota}:RevokeToken", "{authserver:quota}:account"]
    finally:
        await first.aclose()
        await second.aclose()


async def test_redis_failure_falls_back_to_a_local_share(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = redis.asyncio.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    clock = ManualClock()
    vt = VirtualTime(clock)
    governor = QuotaGovernor(
        redis=dead, clock=clock, sleep=vt.sleep, fallback_fraction=0.5, margin=0.0
    )
    try:
        with caplog.at_level(logging.WARNING, logger="authserver.cloud.quota"):
            await governor.acquire("RevokeToken", clock.monotonic())
            # Half of 5/s: the next RevokeToken slot is 0.4 s away, not 0.2 s.
            with pytest.raises(UpstreamThrottled) as caught:
                await governor.acquire("RevokeToken", clock.monotonic() + 0.3)
        assert caught.value.retry_after == pytest.approx(0.4)
        assert governor.mode == "local-fallback"
        # One connection attempt, then Redis is left alone for the retry interval.
        assert governor.stats()["redis_errors"] == 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "50%" in warnings[0].getMessage()
    finally:
        await dead.aclose()


@pytest.mark.parametrize("seed", range(8))
async def test_no_window_at_the_upstream_sees_more_than_the_limit_whatever_the_delays(
    seed: int,
) -> None:
    # Every sleep (the governor's own waits included) wakes up to 0.3 s late; between its
    # grant and its arrival upstream a call spends up to 0.5 s more, and as long again
    # before its answer is back. Whatever those delays, arrivals stay a window apart.
    rng = random.Random(seed)
    clock = ManualClock()
    vt = VirtualTime(clock, late=lambda _n: rng.choice((0.0, 0.0, rng.uniform(0, 0.3))))
    governor = governor_on(clock, vt, margin=0.1)
    arrivals: list[float] = []

    async def call() -> None:
        with await governor.acquire("RevokeToken", FAR):
            await vt.sleep(rng.choice((0.0, rng.uniform(0, 0.5))))
            arrivals.append(clock.monotonic())
            await vt.sleep(rng.uniform(0, 0.5))

    results = await vt.run(call() for _ in range(60))
    assert all(r is None for r in results)
    assert len(arrivals) == 60
    # The emulator (and the vendor) count calls in (now - 1 s, now].
    assert max_in_window(arrivals, 1.0 - 1e-9) <= 5


async def test_a_window_still_held_by_calls_in_flight_is_waited_for_then_refused() -> None:
    clock = ManualClock()
    vt = VirtualTime(clock)
    governor = governor_on(clock, vt, margin=0.0, account_limit=2)
    first = await governor.acquire("Unlimited", FAR)
    await vt.run([governor.acquire("Unlimited", FAR)])  # the second slot, 0.5 s later
    start = clock.monotonic()
    # Both places of the account window are held: the third call waits for a release.
    [refused] = await vt.run([governor.acquire("Unlimited", start + 3)])
    assert isinstance(refused, UpstreamThrottled)
    assert clock.monotonic() == pytest.approx(start + 3), "waited until its deadline"
    first.release()
    third = asyncio.ensure_future(governor.acquire("Unlimited", FAR))
    await vt.run([third])
    # A window (1 s) after the first call was released, not before.
    assert clock.monotonic() == pytest.approx(start + 3 + 1.0)


async def test_a_new_subject_is_not_starved_by_one_that_keeps_minting() -> None:
    clock = ManualClock()
    vt = VirtualTime(clock)
    governor = governor_on(clock, vt, limits={"ApplyToken": 5})
    granted: list[str] = []

    async def mint(subject: str) -> None:
        quota.asking(subject)
        await take(governor, "ApplyToken", FAR)
        granted.append(subject)

    async def newcomer() -> None:
        # Arrives once the flood's 40 requests all queue behind the first.
        while len(granted) < 3:
            await vt.sleep(0.05)
        await mint("new-device")

    await vt.run([*(mint("flooder") for _ in range(40)), newcomer()])
    assert len(granted) == 41
    asked_after = 3
    # Served within two grants of asking (the turn holder, then the rotation), not after
    # the 37 requests the flooder still had queued.
    assert granted.index("new-device") - asked_after <= 2


async def test_turns_rotate_across_subjects_in_order_of_arrival() -> None:
    clock = ManualClock()
    vt = VirtualTime(clock)
    governor = governor_on(clock, vt)
    granted: list[str] = []

    async def mint(subject: str) -> None:
        quota.asking(subject)
        await take(governor, "RevokeToken", FAR)
        granted.append(subject)

    await vt.run([*(mint("a") for _ in range(4)), *(mint("b") for _ in range(2)), mint("c")])
    # The first "a" is granted at once, the second holds the turn for the next slot; the
    # rest queue per subject and are served one per subject in rotation.
    assert granted == ["a", "a", "a", "b", "c", "a", "b"]
