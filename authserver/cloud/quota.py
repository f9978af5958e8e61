"""The quota governor: never send a call the upstream would throttle, across all processes.

Each limit is a GCRA (leaky) bucket with a burst of one (the step is `authserver.limits`'):
calls of one action are spaced by `(1 + margin) / limit` seconds (margin 10% by default),
which keeps them smooth. Every call takes a slot in its action's bucket (when the action has
a limit) and in the account bucket (the vendor's 300 calls/s per source IP, over which the
IP is blocked, not throttled), both at the same instant or neither.

`acquire` returns a `Permit`; the caller releases it once the call is over (its answer is
back, or the attempt failed). Local mode (no Redis, or the Redis fallback) holds a call's
place in each bucket's window from its grant until its release, and grants the
(i + limit)-th call of a bucket only a window (one second plus half the margin) after the
i-th call was released. The upstream therefore never sees more than `limit` arrivals in
any one-second window, WHATEVER the delays: a call arrives after its grant and before its
answer is back, so the arrivals of calls i and i + limit are at least a window apart
however late a wake-up or a send was. (A call abandoned without an answer, a timeout, is
released when it is abandoned: the promise holds for a request that reached the upstream
before its client gave up on it, which is what a timeout means in practice.)

Redis mode reserves slots with one Lua script on the server's `TIME`
(`limits.SharedBuckets`), in keys sharing the hash tag `{<key prefix>}` (Redis Cluster
safe), so every process shares one bucket; it cannot see when another process's call arrives
or completes. It promises the spacing: any `limit + 1` reservations span at least
`limit * (1 + margin) / limit` = 1.1 s, so the upstream sees at most `limit` arrivals in a
second as long as the delays between a grant and its arrival differ by less than the margin
(100 ms by default) between calls.

Fairness, local mode: the waiters of one action queue per subject (named by `asking()`
where the subject is known, carried by a context variable into the token service's mint
tasks), and the next slot goes to the subjects in rotation. A subject that keeps minting
when the quota is saturated delays a new device by one grant per subject waiting, not by
its own queue. Redis mode reserves in the order calls reach Redis, across processes.

A caller passes an absolute deadline on `clock.monotonic()`; when its slot would come later,
it gets `UpstreamThrottled` at once with the time until a slot would be free, and nothing is
reserved (locally: when even its turn in rotation, if nobody else came, would be too late;
later arrivals of other subjects can still push it back, and it is then refused at its
deadline). A call whose slot came but whose window is still held by calls in flight waits
for their release until its deadline, then is refused.

Local buckets (no Redis, or Redis failing) are scaled by `fallback_fraction`, this
process's share (the app sets it to 1 / `AUTHSERVER_REPLICAS`, the number of gateway
processes sharing a source IP, so the processes together still stay under the account
limit that would get the IP blocked). When Redis fails, the governor falls back to them,
logs one warning per outage, and tries Redis again after
`redis_retry_interval` seconds. Failing closed instead would turn a Redis outage into a
full outage although the upstream is still protected.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn

import redis.asyncio

from authserver.clock import Clock, SystemClock
from authserver.cloud.errors import UpstreamThrottled
from authserver.cloud.vendor import DEFAULT_LIMITS
from authserver.limits import Rate, SharedBuckets, next_slot, reserve

log = logging.getLogger(__name__)

ACCOUNT_BUCKET = "account"

Sleep = Callable[[float], Awaitable[None]]

_ASKING: contextvars.ContextVar[str | None] = contextvars.ContextVar("quota_asking", default=None)


def asking(subject: str | None) -> None:
    """Name the subject on whose behalf upstream calls are made from this context on.

    Set where the subject is known (the request handler); the token service mints in tasks
    created from the request's context, so the name follows the request to the governor.
    """
    _ASKING.set(subject)


class _Turns:
    """The waiters for one action's local slots, served round-robin across subjects.

    One waiter at a time holds the turn (it takes the next slot, waits for it, and passes
    the turn on); the others queue per subject, and the turn goes to the subjects in
    rotation, so a subject with a thousand calls queued delays a newcomer by at most one
    call per subject waiting, not by its whole queue.
    """

    __slots__ = ("busy", "queues")

    def __init__(self) -> None:
        self.busy = False
        self.queues: OrderedDict[str | None, deque[asyncio.Future[None]]] = OrderedDict()

    def ahead(self, subject: str | None) -> int:
        """How many turns a newcomer of `subject` waits, if nobody else comes."""
        mine = len(self.queues.get(subject, ()))
        others = sum(min(len(q), mine + 1) for s, q in self.queues.items() if s != subject)
        return int(self.busy) + others + mine

    def join(self, subject: str | None) -> asyncio.Future[None] | None:
        """None: the turn is the caller's now; else a future set when it is."""
        if not self.busy:
            self.busy = True
            return None
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queues.setdefault(subject, deque()).append(turn)
        return turn

    def leave(self, subject: str | None, turn: asyncio.Future[None]) -> None:
        """A queued waiter gives up (its deadline came, or it was cancelled)."""
        queue = self.queues.get(subject)
        if queue is not None and turn in queue:
            queue.remove(turn)
            if not queue:
                del self.queues[subject]

    def pass_on(self) -> None:
        """The holder is done: the next subject in rotation gets the turn."""
        while self.queues:
            subject, queue = self.queues.popitem(last=False)
            turn = queue.popleft()
            if queue:
                self.queues[subject] = queue  # to the end of the rotation
            if not turn.done():
                turn.set_result(None)
                return
        self.busy = False


class _Held:
    """One granted call's place in a bucket's window: held until the call is released."""

    __slots__ = ("released_at",)

    def __init__(self) -> None:
        self.released_at: float | None = None


class _Bucket:
    """One local GCRA bucket with the places of its last `size` grants."""

    __slots__ = ("held", "rate", "tat", "window")

    def __init__(self, limit: float, margin: float) -> None:
        self.rate = Rate((1.0 + margin) / limit)
        size = max(1, math.floor(limit))
        # The window is one second (the upstream's) plus half the margin, for clock jitter.
        self.window = max(1.0, size / limit) * (1.0 + margin / 2)
        self.held: deque[_Held] = deque(maxlen=size)
        self.tat = -math.inf

    def free_at(self) -> float:
        """When the oldest of the last `size` grants lets one more through (inf: in flight)."""
        if len(self.held) < (self.held.maxlen or 1):
            return -math.inf
        released = self.held[0].released_at
        return math.inf if released is None else released + self.window


class Permit:
    """A granted call's slot; `release()` it (or leave its `with` block) once the call is over."""

    __slots__ = ("_governor", "_held")

    def __init__(self, governor: QuotaGovernor | None, held: list[_Held]) -> None:
        self._governor = governor
        self._held = held

    def release(self) -> None:
        """The call is over: its answer is back, or it was abandoned. Idempotent."""
        governor, self._governor = self._governor, None
        if governor is not None:
            governor._release(self._held)

    def __enter__(self) -> Permit:
        """Hold the slot for the block."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Release the slot, whatever ended the block."""
        self.release()


class QuotaGovernor:
    """Per-action and account-wide upstream rate limits; shared through Redis when given."""

    def __init__(
        self,
        limits: Mapping[str, float] | None = None,
        *,
        account_limit: float = 300,
        clock: Clock | None = None,
        redis: redis.asyncio.Redis | None = None,
        key_prefix: str = "authserver:quota:",
        margin: float = 0.10,
        fallback_fraction: float = 1.0,
        redis_retry_interval: float = 5.0,
        sleep: Sleep | None = None,
        idle: Sleep | None = None,
    ) -> None:
        merged = {**DEFAULT_LIMITS, **(limits or {})}
        for name, value in [*merged.items(), ("account_limit", account_limit)]:
            if not value > 0:
                raise ValueError(f"quota limit for {name} must be positive, got {value!r}")
        if not 0 < fallback_fraction <= 1:
            raise ValueError("fallback_fraction must be in (0, 1]")
        if not 0 <= margin < 1:
            raise ValueError("margin must be in [0, 1)")
        self.limits: dict[str, float] = merged
        self.account_limit = float(account_limit)
        self.margin = margin
        self._clock: Clock = clock or SystemClock()
        self._sleep: Sleep = sleep or self._clock.sleep
        # Deadline timers of queued waiters: they must not move a test's clock themselves.
        self._idle: Sleep = idle or self._clock.idle
        tag = key_prefix.rstrip(":") or "authserver:quota"
        self._key_prefix = "{" + tag + "}:"
        # Local buckets (no Redis, or Redis failing) hold only this process's share.
        scale = fallback_fraction
        self._shared = (
            None
            if redis is None
            else SharedBuckets(
                redis,
                clock=self._clock,
                log=log,
                owner="quota governor",
                fallback=f"using local buckets at {100 * scale:.0f}% of the limits",
                back="buckets are shared again",
                retry_interval=redis_retry_interval,
            )
        )
        self._local: dict[str, _Bucket] = {
            name: _Bucket(limit * scale, margin) for name, limit in merged.items()
        }
        self._local[ACCOUNT_BUCKET] = _Bucket(self.account_limit * scale, margin)
        self.acquired: Counter[str] = Counter()
        self.waits: Counter[str] = Counter()
        self.wait_seconds: defaultdict[str, float] = defaultdict(float)
        self.refused: Counter[str] = Counter()
        self._released: asyncio.Event = asyncio.Event()
        self._turns: defaultdict[str, _Turns] = defaultdict(_Turns)

    @property
    def mode(self) -> str:
        """`local` (no Redis), `redis` (shared buckets) or `local-fallback` (Redis failing)."""
        if self._shared is None:
            return "local"
        return "local-fallback" if self._shared.down else "redis"

    async def acquire(self, action: str, deadline: float) -> Permit:
        """Wait for a slot of `action` before `deadline` (monotonic), or raise at once.

        Release the permit once the call is over (`with permit:` around the call).
        """
        buckets = [action, ACCOUNT_BUCKET] if action in self.limits else [ACCOUNT_BUCKET]
        if self._shared is not None:
            shared = await self._shared.reserve(
                [self._key_prefix + name for name in buckets],
                [self._shared_rate(name) for name in buckets],
                deadline - self._clock.monotonic(),
            )
            if shared is not None:
                granted, wait = shared
                if not granted:
                    self._refuse(action, wait)
                await self._wait(action, wait)
                self.acquired[action] += 1
                return Permit(None, [])
        return await self._acquire_local(action, buckets, deadline)

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: grants, waits, refusals per action, and the mode in use."""
        return {
            "mode": self.mode,
            "limits": dict(self.limits),
            "account_limit": self.account_limit,
            "acquired": dict(self.acquired),
            "waits": dict(self.waits),
            "wait_seconds": dict(self.wait_seconds),
            "refused": dict(self.refused),
            "redis_errors": 0 if self._shared is None else self._shared.errors,
        }

    async def _acquire_local(self, action: str, names: list[str], deadline: float) -> Permit:
        buckets = [self._local[name] for name in names]
        turns = self._turns[action]
        subject = _ASKING.get()
        now = self._clock.monotonic()
        # Refused at once when even a turn in rotation order would come too late.
        rates = [b.rate for b in buckets]
        interval = max(rate.interval for rate in rates)
        soonest = next_slot([b.tat for b in buckets], rates, now) + turns.ahead(subject) * interval
        if soonest > deadline:
            self._refuse(action, soonest - now)
        turn = turns.join(subject)
        if turn is not None:
            await self._take_turn(action, turns, subject, turn, deadline)
        try:
            return await self._slot(action, buckets, deadline)
        finally:
            turns.pass_on()

    async def _take_turn(
        self,
        action: str,
        turns: _Turns,
        subject: str | None,
        turn: asyncio.Future[None],
        deadline: float,
    ) -> None:
        """Wait in the subject's queue until the turn is ours, or refuse at the deadline."""
        timer = asyncio.ensure_future(self._idle(max(0.0, deadline - self._clock.monotonic())))
        try:
            await asyncio.wait((turn, timer), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                turns.pass_on()  # handed to us as we were cancelled: hand it on
            else:
                turns.leave(subject, turn)
            raise
        finally:
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)
        if not turn.done():
            turns.leave(subject, turn)
            turn.cancel()
            self._refuse(action, max(0.0, deadline - self._clock.monotonic()) + 1.0)

    async def _slot(self, action: str, buckets: list[_Bucket], deadline: float) -> Permit:
        """The turn holder: take the next slot of every bucket and wait for it."""
        now = self._clock.monotonic()
        slot, tats = reserve([b.tat for b in buckets], [b.rate for b in buckets], now, deadline)
        if tats is None:
            self._refuse(action, slot - now)
        for bucket, tat in zip(buckets, tats, strict=True):
            bucket.tat = tat
        while True:
            now = self._clock.monotonic()
            if slot > now:
                await self._wait(action, slot - now)
                continue
            # Our slot has come; the window must still be free of calls not yet over.
            slot = max(b.free_at() for b in buckets)
            if slot <= now:
                held = [_Held() for _ in buckets]
                for bucket, place in zip(buckets, held, strict=True):
                    bucket.held.append(place)
                self.acquired[action] += 1
                return Permit(self, held)
            if slot > deadline and slot != math.inf:
                self._refuse(action, slot - now)
            if slot == math.inf:
                # A call of the window is in flight: wait for a release, at most until the
                # deadline.
                if now >= deadline or not await self._until_released(deadline):
                    self._refuse(action, max(b.window for b in buckets))
                slot = now

    async def _until_released(self, deadline: float) -> bool:
        """Wait for some permit's release; False when the deadline came first."""
        released = self._released
        waiter = asyncio.ensure_future(released.wait())
        timer = asyncio.ensure_future(self._idle(max(0.0, deadline - self._clock.monotonic())))
        try:
            await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, timer):
                task.cancel()
            await asyncio.gather(waiter, timer, return_exceptions=True)
        return released.is_set() or self._clock.monotonic() < deadline

    def _release(self, held: list[_Held]) -> None:
        now = self._clock.monotonic()
        for place in held:
            place.released_at = now
        # Wake every waiter once, then arm the event again for the next release.
        self._released.set()
        self._released = asyncio.Event()

    def _shared_rate(self, name: str) -> Rate:
        """A bucket's rule in Redis: the whole limit (the share is for local buckets only)."""
        limit = self.account_limit if name == ACCOUNT_BUCKET else self.limits[name]
        return Rate((1.0 + self.margin) / limit)

    async def _wait(self, action: str, seconds: float) -> None:
        if seconds <= 0:
            return
        self.waits[action] += 1
        self.wait_seconds[action] += seconds
        await self._sleep(seconds)

    def _refuse(self, action: str, retry_after: float) -> NoReturn:
        self.refused[action] += 1
        raise UpstreamThrottled(
            f"no upstream quota for {action} within the deadline",
            retry_after=retry_after,
            extra={"action": action},
        )
