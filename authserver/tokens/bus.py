"""Cache coherence between processes: invalidation events over Redis pub/sub.

Every process applies an event locally at once and publishes it; the others apply it when it
arrives, within milliseconds. Pub/sub delivers only to connected subscribers, so a process
whose subscription broke treats the gap as "anything may have changed": on every
(re)subscription it runs its resync handlers (drop the L1 caches, reload the blocklist).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from authserver import background
from authserver.background import STOP_TIMEOUT
from authserver.clock import Clock, SystemClock
from authserver.errors import StoreUnavailable

log = logging.getLogger(__name__)

CHANNEL = "authserver:invalidate"
Handler = Callable[[dict[str, Any]], None]
Resync = Callable[[], Awaitable[None]]


class InvalidationBus:
    """Fan-out of invalidation events; in-process only unless given Redis."""

    def __init__(
        self,
        redis: aioredis.Redis | None = None,
        *,
        clock: Clock | None = None,
        retry_interval: float = 0.5,
    ) -> None:
        self._redis = redis
        self._clock: Clock = clock or SystemClock()
        self._retry = retry_interval
        self._handlers: list[Handler] = []
        self._resyncs: list[Resync] = []
        self.origin = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None
        self.connected = redis is None
        # Subscribed, and the resync handlers of this subscription have finished: from here
        # on no flush is pending (a test waits on it before relying on warm caches).
        self.synced = redis is None
        self._subscribed = asyncio.Event()
        # Set when redis-py reconnected the subscription by itself (`_on_reconnect`).
        self._reconnected = False

    def on_event(self, handler: Handler) -> None:
        """Call `handler` for every event, local or remote."""
        self._handlers.append(handler)

    def on_resync(self, handler: Resync) -> None:
        """Call `handler` whenever events may have been missed (each (re)subscription)."""
        self._resyncs.append(handler)

    async def start(self) -> None:
        """Subscribe (when shared) and wait briefly for the first subscription."""
        if self._redis is None:
            return
        self._task = asyncio.create_task(self._listen(), name="invalidation-bus")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout=2.0)
        except TimeoutError:
            log.warning("invalidation bus: not subscribed yet; caches resync when it is")

    async def close(self) -> None:
        """Stop listening."""
        task, self._task = self._task, None
        await background.stop([task])

    async def publish(self, event: dict[str, Any]) -> None:
        """Apply `event` here, then send it to every other process.

        Raises RedisError when the event could not be sent: the caller must not report
        success for a change the other processes did not hear of.
        """
        self._dispatch(event)
        if self._redis is not None:
            payload = json.dumps({**event, "origin": self.origin}, ensure_ascii=False)
            await self._redis.publish(CHANNEL, payload)

    def _dispatch(self, event: dict[str, Any]) -> None:
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:
                log.exception("invalidation handler failed for %s", event.get("kind"))

    async def _listen(self) -> None:
        assert self._redis is not None
        while True:
            pubsub = self._redis.pubsub()
            connection = None
            try:
                await pubsub.subscribe(CHANNEL)
                # redis-py reconnects a broken subscription itself and subscribes again
                # (the client's one retry on a connection error): told of it, the gap is
                # resynced here as one this loop saw would be.
                connection = getattr(pubsub, "connection", None)
                if connection is not None:
                    connection.register_connect_callback(self._on_reconnect)
                self._reconnected = False
                self.connected = True
                await self._resync()
                self._subscribed.set()
                while True:
                    if self._reconnected:
                        log.warning("invalidation bus: Redis reconnected the subscription")
                        self._reconnected = False
                        await self._resync()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is None or message.get("type") != "message":
                        continue
                    self._receive(message["data"])
            except asyncio.CancelledError:
                raise
            except (StoreUnavailable, RedisError, OSError) as err:
                # StoreUnavailable: a resync handler's read failed (Redis went away again).
                if self.connected:
                    log.warning(
                        "invalidation bus lost Redis (%s); resubscribing", type(err).__name__
                    )
                self.connected = False
            except Exception:
                # Anything else (a cluster client without its slot map, a bug in a resync
                # handler) must not end the listener: caches would silently stop being coherent.
                log.exception("invalidation bus failed; resubscribing")
                self.connected = False
            finally:
                self.synced = False
                if connection is not None:
                    connection.deregister_connect_callback(self._on_reconnect)
                await _close_quietly(pubsub)
            await self._clock.idle(self._retry)

    async def _resync(self) -> None:
        self.synced = False
        for resync in self._resyncs:
            await resync()
        self.synced = True

    def _on_reconnect(self, _connection: Any) -> None:
        self._reconnected = True

    def _receive(self, data: bytes | str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            log.warning("invalidation bus: ignored a malformed event")
            return
        if not isinstance(event, dict) or event.get("origin") == self.origin:
            return
        self._dispatch(event)


async def _close_quietly(pubsub: Any) -> None:
    # To its end even while the bus is stopped: a close cut short leaves the connection open.
    with (
        contextlib.suppress(RedisError, OSError, RuntimeError, TimeoutError),
        background.finishing(),
    ):
        await asyncio.wait_for(pubsub.aclose(), timeout=STOP_TIMEOUT)
