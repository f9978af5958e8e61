"""The worker: drains the durable revocation queue through RevokeToken, and does housekeeping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from authserver import background
from authserver.clock import Clock
from authserver.errors import GatewayError, StoreUnavailable
from authserver.tokens.revocation.state import Job, RevocationState

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 60.0
Revoke = Callable[[str, str], Awaitable[None]]
# (instance id, token) -> whether the upstream still accepts the token (QueryToken).
StillValid = Callable[[str, str], Awaitable[bool]]


class RevocationWorker:
    """Drains the queue through RevokeToken, paced by the quota governor.

    Each job is kept (`RevocationState.keep`) right before its calls: a job that waited in
    its batch past the claim idle time may have been handed to another worker, and is left to
    it. The calls must then end within the claim idle time (the app bounds their deadline),
    or another worker takes the job while its RevokeToken is still in flight.

    A token is revoked upstream once: RevokeToken has the scarcer quota, and an operator
    counting revocations upstream sees each one once. A job whose token another job revoked
    lately (`RevocationState.carried`: an admin retried a revocation that was refused after
    its jobs were queued) is acknowledged without a call. A job handed out before
    (`Job.redelivered`) may have been carried out already: its worker died between the call
    and the acknowledgement, or the acknowledgement was lost with a Redis master that failed
    over. It is first checked with `still_valid` (QueryToken), and acknowledged without a
    second RevokeToken when the upstream no longer accepts the token.
    """

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
        still_valid: StillValid | None = None,
    ) -> None:
        self._state = state
        self._revoke = revoke
        self._still_valid = still_valid
        self._clock = clock
        self._batch = batch
        self._idle_wait = idle_wait
        self._retry_pause = retry_pause
        self._maintain = maintain
        self._maintenance_interval = maintenance_interval
        self._next_maintenance = 0.0
        self._task: asyncio.Task[None] | None = None
        self.done = 0
        # Redelivered jobs found already revoked upstream: acknowledged without a call.
        self.already_revoked = 0
        # Jobs that waited in a batch past the claim idle time, left to their new holder.
        self.taken_over = 0
        self.failures = 0
        self.store_errors = 0

    def start(self) -> None:
        """Run in the background until stop()."""
        self._task = asyncio.create_task(self._run(), name="revocation-worker")

    async def stop(self) -> None:
        """Cancel and wait (bounded); an interrupted job stays pending and is retried."""
        task, self._task = self._task, None
        await background.stop([task])

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
        if not await self._state.keep(job):
            # It waited in the batch past the claim idle time and another worker took it.
            self.taken_over += 1
            log.info("revocation of token %s was taken over by another worker", job.fingerprint)
            return
        done_before = await self._state.carried(job)
        if not done_before and job.redelivered:
            accepts = await self._upstream_accepts(job)
            if accepts is None:
                return  # handed back for a later retry
            done_before = not accepts
        if done_before:
            await self._state.ack(job)
            self.already_revoked += 1
            log.info(
                "token %s was revoked upstream already; not revoking it twice", job.fingerprint
            )
            return
        try:
            await self._revoke(job.instance_id, job.token)
        except GatewayError as err:
            await self._failed(job, err)
            return
        await self._state.ack(job)
        self.done += 1
        log.debug("revoked token %s upstream", job.fingerprint)

    async def _failed(self, job: Job, err: GatewayError, what: str = "revocation") -> None:
        """Record an upstream failure; the job is retried later unless it never can succeed."""
        final = _final(err)
        self.failures += 1
        log.warning(
            "%s of token %s failed (%s)%s",
            what,
            job.fingerprint,
            err.code,
            "; giving up" if final else "; will retry",
        )
        await self._state.failed(
            job, f"{err.code}: {err.detail}", int(self._clock.time() * 1000), final=final
        )
        if not final:
            await self._clock.sleep(self._retry_pause)

    async def _upstream_accepts(self, job: Job) -> bool | None:
        """Whether the upstream still accepts the job's token; None: ask again later.

        When the query fails for a while (throttled, unreachable), the job is handed back
        and retried later: a RevokeToken now could be the second one. When the query can
        never succeed (refused for good: say a credential allows RevokeToken but not
        QueryToken), the token is revoked anyway: a second RevokeToken is harmless upstream,
        a lost one is not.
        """
        if self._still_valid is None:
            return True
        try:
            return await self._still_valid(job.instance_id, job.token)
        except GatewayError as err:
            if not _final(err):
                await self._failed(job, err, "the query before revoking")
                return None
            log.info("cannot query token %s (%s); revoking it", job.fingerprint, err.code)
            return True


def _final(err: GatewayError) -> bool:
    """Whether an upstream failure will never turn into a success (the vendor refused)."""
    return err.status == 502 and not getattr(err, "retryable", True)


def _cause_name(err: BaseException) -> str:
    """The name of the Redis error behind a translated one (for the log line)."""
    cause = err.__cause__ if isinstance(err, StoreUnavailable) else None
    return type(cause or err).__name__
