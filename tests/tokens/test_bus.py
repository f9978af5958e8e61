"""The invalidation bus resyncs after every break of its subscription, however it was mended.

redis-py mends a broken subscription by itself (the client's one retry on a connection
error reconnects and subscribes again), so the bus's own loop never sees the break; events
published meanwhile are lost all the same, and the caches must be resynced.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from authserver.redis_conn import connect_redis
from authserver.tokens.bus import CHANNEL, InvalidationBus
from tests.helpers import eventually


async def test_a_subscription_redis_py_mended_by_itself_is_resynced(redis_url: str) -> None:
    client = connect_redis(redis_url)
    bus = InvalidationBus(client)
    resyncs: list[int] = []
    received: list[dict[str, Any]] = []

    async def counted() -> None:
        resyncs.append(1)

    bus.on_resync(counted)
    bus.on_event(received.append)
    other = aioredis.from_url(redis_url)
    try:
        await bus.start()
        assert resyncs == [1]
        assert bus.synced
        assert await other.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == 1
        await eventually(lambda: len(resyncs) == 2 and bus.synced, what="a second resync")
        # Still subscribed: events from other processes arrive.
        await other.publish(CHANNEL, json.dumps({"kind": "flush", "origin": "elsewhere"}))
        await eventually(lambda: received == [{"kind": "flush", "origin": "elsewhere"}])
    finally:
        await bus.close()
        await client.aclose()
        await other.aclose()
