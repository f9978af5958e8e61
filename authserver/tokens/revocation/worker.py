"""The worker: drains the durable revocation queue through RevokeToken, and does housekeeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from authserver.clock import Clock
from authserver.errors import GatewayError, StoreUnavailable
from authserver.tokens.bus import STOP_TIMEOUT
from authserver.tokens.revocation.state import Job, RevocationState

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 60.0
Revoke = Callable[[str, str], Awaitable[None]]


class RevocationWorker:
    """Drains the queue through RevokeToken, paced by the quota governor."""

    def __init__(
        self,
        state: RevocationState,
        revoke: Revoke,
        *,
        clock: Clock,
        batch: int = 5,
        idle_wait: float = 1.0,
        retry_pause: float = 1.0,
        maintain: Callable[[], Awaitable[int]] | None = None,
        maintenance_interval: float = MAINTENANCE_INTERVAL,
    ) -> None:
        self._state = state
        self._revoke = revoke
        self._clock = clock
        self._batch = batch
        self._idle_wait = idle_wait
        self._retry_pause = retry_pause
        self._maintain = maintain
        self._maintenance_interval = maintenance_interval
        self._next_maintenance = 0.0
        self._task: asyncio.Task[None] | None = None
        self.done = 0
        self.failures = 0
        self.store_errors = 0

    def start(self) -> None:
        """Run in the background until stop()."""
        self._task = asyncio.create_task(self._run(), name="revocation-worker")

    async def stop(self) -> None:
        """Cancel and wait (bounded); an interrupted job stays pending and is retried."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=STOP_TIMEOUT)
            self._task = None

    async def _housekeeping(self) -> None:
        """Prune old blocks and reap dead consumers, at most every maintenance interval."""
        now = self._clock.monotonic()
        if now < self._next_maintenance:
            return
        self._next_maintenance = now + self._maintenance_interval
        if self._maintain is not None:
            await self._maintain()
        reaped = await self._state.reap_consumers()
        if reaped:
            log.info("revocation queue: removed %d consumer(s) of stopped processes", reaped)

    async def _run(self) -> None:
        while True:
            try:
                await self._housekeeping()
                # Revocations held back by a grace margin join the queue once due.
                await self._state.promote_due(int(self._clock.time() * 1000))
                jobs = await self._state.claim(self._batch, self._idle_wait)
                for index, job in enumerate(jobs):
                    try:
                        await self._one(job)
                    except Exception:
                        # Hand the rest of the batch back, or they would stay claimed.
                        now = int(self._clock.time() * 1000)
                        for left in jobs[index:]:
                            await self._state.failed(left, "worker error", now, final=False)
                        raise
            except asyncio.CancelledError:
                raise
            except (StoreUnavailable, RedisError, OSError) as err:
                # A job whose acknowledgement was lost stays pending and is claimed again.
                self.store_errors += 1
                log.warning("revocation worker: store unavailable (%s)", _cause_name(err))
                await self._clock.sleep(self._retry_pause)
            except Exception:
                log.exception("revocation worker: unexpected error")
                await self._clock.sleep(self._retry_pause)

    async def _one(self, job: Job) -> None:
        """One RevokeToken; acknowledged once the upstream confirmed it."""
        try:
            await self._revoke(job.instance_id, job.token)
        except GatewayError as err:
            final = err.status == 502 and not getattr(err, "retryable", True)
            self.failures += 1
            log.warning(
                "revocation of token %s failed (%s)%s",
                job.fingerprint,
                err.code,
                "; giving up" if final else "; will retry",
            )
            await self._state.failed(
                job, f"{err.code}: {err.detail}", int(self._clock.time() * 1000), final=final
            )
            if not final:
                await self._clock.sleep(self._retry_pause)
            return
        await self._state.ack(job)
        self.done += 1
        log.debug("revoked token %s upstream", job.fingerprint)


def _cause_name(err: BaseException) -> str:
    """The name of the Redis error behind a translated one (for the log line)."""
    cause = err.__cause__ if isinstance(err, StoreUnavailable) else None
    return type(cause or err).__name__
