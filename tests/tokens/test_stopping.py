"""A gateway that stops mid-issuance releases its issuance lock, even on a slow Redis.

Stopping cancels the flight; its `finally` gives the lock back. `background.stop` cancels a
task again while it runs on (a cancellation Python 3.11 dropped), and a second cancellation
that lands in that `finally` would leave the lock behind: every other gateway would then
wait out its TTL (the request deadline + 2 s) and answer 503 for that token meanwhile.
Redis is made slow with CLIENT PAUSE WRITE, which holds the unlock's script back for longer
than `background.stop` waits between two cancellations.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from authserver import appkeys
from authserver.emulator.state import Fault
from tests.fixtures.emulator import EmulatorHandle
from tests.fixtures.gateway import MakeGateway, bearer, make_jwt
from tests.helpers import eventually

PAUSE_MS = 400  # past RECANCEL_INTERVAL, well within STOP_TIMEOUT


async def test_a_flight_cancelled_at_shutdown_releases_its_lock_on_a_slow_redis(
    emulator: EmulatorHandle, make_gateway: MakeGateway, redis_url: str
) -> None:
    gateway = await make_gateway(emulator, redis_url=redis_url)
    tokens = gateway.server.app[appkeys.TOKENS]
    held = asyncio.Event()  # never set: the ApplyToken call waits until it is cancelled
    emulator.state.faults["ApplyToken"] = Fault(hold=held)
    redis = aioredis.from_url(redis_url)
    try:
        pending = asyncio.create_task(gateway.post("/v1/token", headers=bearer(make_jwt("kim"))))
        await eventually(lambda: emulator.state.stats()["calls"].get("ApplyToken", 0) >= 1)
        assert await redis.keys("*lock:*"), "the flight holds its issuance lock"
        await redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        assert await tokens.close() is None
        assert not await redis.keys("*lock:*"), "the issuance lock was left behind"
    finally:
        held.set()
        with contextlib.suppress(Exception):
            await redis.execute_command("CLIENT", "UNPAUSE")
        await redis.aclose()
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
